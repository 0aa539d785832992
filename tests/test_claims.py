"""lib.claims: verdicts follow from the rule, the vocabulary is fixed, results.json and summary.md agree."""
import json

import numpy as np
import pytest

from lib import claims as C


def test_rule_to_verdict():
    kw = dict(paper="p", ours="o", rule="r")
    assert C.check("a", "x", holds=True, **kw)["verdict"] == "reproduced"
    assert C.check("a", "x", holds=False, **kw)["verdict"] == "not reproduced"
    assert C.check("a", "x", holds=None, **kw)["verdict"] == "inconclusive"
    assert C.check("a", "x", holds=True, inconclusive="control failed", **kw)["verdict"] == "inconclusive"
    assert C.check("a", "x", holds=True, kind="sanity", **kw)["verdict"] == "sanity check"
    assert C.check("a", "x", holds=False, kind="sanity", **kw)["verdict"] == "not reproduced"
    assert C.check("a", "x", holds=False, kind="finding", **kw)["verdict"] == "finding"
    assert C.check("a", "x", holds=np.bool_(True), **kw)["verdict"] == "reproduced"
    with pytest.raises(ValueError, match="kind"):
        C.check("a", "x", holds=True, kind="maybe", **kw)


def test_validation():
    with pytest.raises(ValueError, match="verdict"):
        C.claim("a", "x", "p", "o", "yes", "w")
    with pytest.raises(ValueError, match="non-empty"):
        C.validate([])
    row = C.claim("a", "x", "p", "o", "reproduced", "w")
    with pytest.raises(ValueError, match="duplicate"):
        C.validate([row, dict(row)])


def test_write_results_round_trip(tmp_path):
    rows = [C.check("one", "a | b", paper=0.5, ours=float("nan"), holds=True, rule="r"),
            C.check("two", "c", paper="q", ours=3, holds=False, rule="r2", kind="finding")]
    path = C.write_results(tmp_path, {"x": np.float32(1.5), "y": [float("inf")]}, rows, title="T", notes=["n1"])
    data = json.loads(path.read_text())
    assert data["x"] == 1.5 and data["y"] == [None]
    assert C.load_claims(path) == rows
    md = (tmp_path / "summary.md").read_text()
    assert "# T" in md and "a \\| b" in md and "1 reproduced, 1 finding" in md and md.rstrip().endswith("n1")

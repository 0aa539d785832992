"""The paper's statements beside ours, each with a verdict from a fixed vocabulary.

Every paper notebook ends with a list of claims::

    from lib.claims import check, write_results
    claims = [
        check("power_32k", "PowerAttention retrieves at 32K", paper="succeeds",
              ours="97.5% [95, 99] (n=640)", holds=lo >= 0.8, rule="lower 95% bound >= 80%"),
        ...
    ]
    write_results(output_dir, results, claims, title="Figure 3 ...")

``write_results`` stores ``results.json`` (the notebook's numbers plus the
``claims`` list) and generates ``summary.md`` from the same list, so the
verdict shown in the summary, in ``REPORT.md`` and in the README status table
is the one computed here, never typed in a notebook.

Verdicts:

* ``reproduced``      the paper's statement holds on our numbers, by a rule written before the run;
* ``not reproduced``  it does not;
* ``inconclusive``    the run cannot decide (a control failed, too few samples, a confound);
* ``sanity check``    true by construction (a property of our own code or of arithmetic), shown so a
                      reader can see it, not counted as a reproduction;
* ``finding``         the paper's statement is wrong as written (e.g. a bound that fails).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "sanity check", "finding")
KEYS = ("id", "claim", "paper", "ours", "verdict", "why")
KINDS = ("reproduction", "sanity", "finding")


def claim(id: str, claim: str, paper, ours, verdict: str, why: str) -> dict:
    """One validated claim row (a plain dict with exactly ``KEYS``)."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
    for name, value in (("id", id), ("claim", claim), ("why", why)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"claim {name} must be a non-empty string, got {value!r}")
    return dict(id=id, claim=claim, paper=_text(paper), ours=_text(ours), verdict=verdict, why=why)


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def check(id: str, claim_text: str, *, paper, ours, holds, rule: str, kind: str = "reproduction",
          inconclusive: str | None = None) -> dict:
    """A claim whose verdict follows from ``holds`` and ``kind`` by a fixed rule.

    kind "reproduction": holds -> reproduced, else not reproduced.
    kind "sanity":       holds -> sanity check (true by construction), else not reproduced (a bug to look at).
    kind "finding":      the paper's statement tested as written: holds -> reproduced, fails -> finding.
    ``inconclusive``: a reason that overrides the rule (the run cannot decide), e.g. a failed control.
    ``holds`` may be None (could not be evaluated): inconclusive.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if holds is not None and not isinstance(holds, bool):
        try:
            holds = bool(holds)
        except Exception:  # noqa: BLE001
            raise TypeError(f"holds must be a bool or None, got {type(holds).__name__}") from None
    why = f"rule: {rule}"
    if inconclusive:
        return claim(id, claim_text, paper, ours, "inconclusive", f"{why}; cannot decide: {inconclusive}")
    if holds is None:
        return claim(id, claim_text, paper, ours, "inconclusive", f"{why}; could not be evaluated")
    if kind == "sanity":
        verdict = "sanity check" if holds else "not reproduced"
        why += "; true by construction" if holds else "; FAILED: a property of our own code does not hold"
    elif kind == "finding":
        verdict = "reproduced" if holds else "finding"
        why += "; holds as written" if holds else "; the paper's statement fails as written"
    else:
        verdict = "reproduced" if holds else "not reproduced"
        why += "; holds" if holds else "; does not hold"
    return claim(id, claim_text, paper, ours, verdict, why)


def validate(claims) -> list[dict]:
    """Raise ValueError unless ``claims`` is a non-empty list of valid claim rows with unique ids."""
    if not isinstance(claims, list) or not claims:
        raise ValueError("claims must be a non-empty list")
    seen = set()
    for c in claims:
        if not isinstance(c, dict) or set(c) != set(KEYS):
            raise ValueError(f"each claim needs exactly the keys {KEYS}, got {sorted(c) if isinstance(c, dict) else c!r}")
        if c["verdict"] not in VERDICTS:
            raise ValueError(f"claim {c['id']!r}: verdict {c['verdict']!r} not in {VERDICTS}")
        if c["id"] in seen:
            raise ValueError(f"duplicate claim id {c['id']!r}")
        seen.add(c["id"])
    return claims


def counts(claims) -> dict:
    """Number of claims per verdict (every verdict present, zeros included)."""
    out = {v: 0 for v in VERDICTS}
    for c in claims:
        out[c["verdict"]] += 1
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(claims, columns=("claim", "paper", "ours", "verdict", "why")) -> str:
    head = "| " + " | ".join(columns) + " |"
    sep = "|" + "---|" * len(columns)
    rows = ["| " + " | ".join(_cell(c[k]) for k in columns) + " |" for c in claims]
    return "\n".join([head, sep, *rows])


def summary_markdown(title: str, claims, notes=()) -> str:
    """``summary.md``: a title, the claims table, then free notes (setup, why numbers differ)."""
    validate(claims)
    n = counts(claims)
    tally = ", ".join(f"{v} {k}" for k, v in n.items() if v)
    lines = [f"# {title}", "", f"Verdicts: {tally}.", "", markdown_table(claims)]
    notes = [notes] if isinstance(notes, str) else list(notes)
    if notes:
        lines += [""] + notes
    return "\n".join(lines) + "\n"


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.integer):
            return int(obj)
        if isinstance(obj, np.floating):
            return float(obj)
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.bool_):
            return bool(obj)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _finite(obj):
    """NaN/inf are not JSON: store them as None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_results(output_dir, results: dict, claims, *, title: str, notes=()) -> Path:
    """Write ``results.json`` (``results`` + ``claims``) and ``summary.md`` into ``output_dir``."""
    validate(claims)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(results)
    record["claims"] = claims
    plain = json.loads(json.dumps(record, default=_json_default))  # numpy scalars -> numbers (NaN kept)
    (out / "results.json").write_text(json.dumps(_finite(plain), indent=2) + "\n")
    (out / "summary.md").write_text(summary_markdown(title, claims, notes))
    return out / "results.json"


def load_claims(results_json) -> list[dict]:
    """The validated ``claims`` list of a ``results.json``."""
    data = json.loads(Path(results_json).read_text())
    return validate(data.get("claims"))


__all__ = ["KEYS", "VERDICTS", "check", "claim", "counts", "load_claims", "markdown_table", "summary_markdown",
           "validate", "write_results"]

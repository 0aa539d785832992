"""Every numbered notebook executes headless with the ci profile and writes its outputs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
# The accuracy notebooks share one cached run of lib.pipeline (params/accuracy/ci.yaml): they run in one
# xdist worker, one after the other, so two never compute (and write) the same run at once.
SHARED_CACHE = {nb: "accuracy" for nb in ("04_figure3_passkey", "05_figure1b_alpha", "06_table1_perplexity",
                                          "10_figure5_probing")}


def _executed_params():
    return [pytest.param(p, id=p.stem, marks=[pytest.mark.xdist_group(SHARED_CACHE.get(p.stem, p.stem))])
            for p in NOTEBOOKS]


def _load(path):
    return json.loads(path.read_text())


def test_there_are_notebooks():
    assert NOTEBOOKS, "no numbered notebooks found in notebooks/"


@pytest.mark.parametrize("nb_path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_source_is_clean_and_parameterised(nb_path):
    nb = _load(nb_path)
    cells = nb["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{nb_path.name}: needs exactly one cell tagged 'parameters'"
    src = "".join(tagged[0]["source"])
    assert "profile" in src and "output_dir" in src, f"{nb_path.name}: parameters cell must define profile and output_dir"
    assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), (
        f"{nb_path.name}: source notebook stores outputs (run `make clean-notebooks`)")
    for profile in ("ci", "cpu", "gpu"):
        assert (ROOT / "params" / nb_path.stem / f"{profile}.yaml").exists(), f"missing params/{nb_path.stem}/{profile}.yaml"
    assert "MPLBACKEND" not in json.dumps(cells), f"{nb_path.name}: must not force a matplotlib backend"


@pytest.mark.notebook
@pytest.mark.parametrize("nb_path", _executed_params())
def test_notebook_executes_with_ci_profile(nb_path, tmp_path):
    papermill = pytest.importorskip("papermill")
    import yaml

    params = yaml.safe_load((ROOT / "params" / nb_path.stem / "ci.yaml").read_text()) or {}
    out_dir = tmp_path / nb_path.stem
    params.update(profile="ci", output_dir=str(out_dir))
    # The kernel is a subprocess: it finds lib/ and kernels/ through PYTHONPATH.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    papermill.execute_notebook(str(nb_path), str(tmp_path / f"{nb_path.stem}.ipynb"), parameters=params,
                               cwd=str(ROOT), kernel_name="python3", progress_bar=False)
    produced = {p.name for p in out_dir.iterdir()}
    assert "provenance.json" in produced, f"{nb_path.name} wrote no provenance.json"
    assert "summary.md" in produced, f"{nb_path.name} wrote no summary.md"
    assert any(name.endswith(".png") for name in produced), f"{nb_path.name} saved no figure"
    prov = json.loads((out_dir / "provenance.json").read_text())
    assert prov["parameters"], "provenance.json must record the parameters"

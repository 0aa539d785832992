"""Provenance records and the replication report built from notebook outputs."""
import json

import matplotlib

matplotlib.use("Agg")  # this test process only; notebooks keep their inline backend
import matplotlib.pyplot as plt

from lib import provenance, report


def test_provenance_records_commit_device_versions_and_params(tmp_path):
    rec = provenance.write_provenance(tmp_path / "nb", params={"seq_len": 4096})
    on_disk = json.loads((tmp_path / "nb" / "provenance.json").read_text())
    assert on_disk["parameters"] == {"seq_len": 4096} == rec["parameters"]
    assert on_disk["commit"] and "torch" in on_disk["versions"] and "device" in on_disk
    assert len(on_disk["source_digest"]) == 16 and on_disk["source_digest"] == provenance.source_digest()


def test_report_gathers_summaries_figures_and_provenance(tmp_path):
    out = tmp_path / "ci"
    folder = out / "01_masks"
    provenance.write_provenance(folder, params={"a": 1})
    (folder / "summary.md").write_text("| claim | paper | ours |\n|---|---|---|\n| budget | 10 | 10 |\n")
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    provenance.save_figure(fig, folder, "budget")
    plt.close(fig)
    (out / "01_masks.ipynb").write_text("{}")
    (out / "02_unfinished.tmp.ipynb").write_text("{}")  # a failed run's leftover is not reported
    text = report.build_report(out)
    assert "## 01_masks" in text and "| budget | 10 | 10 |" in text
    assert "01_masks/budget.png" in text and "Provenance: commit" in text
    assert "02_unfinished" not in text


def test_report_cli_rejects_missing_folder(tmp_path, capsys):
    assert report.main([str(tmp_path / "nope")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_status_table_and_readme_come_from_claims(tmp_path):
    from lib.claims import check, write_results

    gpu, cpu = tmp_path / "gpu", tmp_path / "cpu"
    write_results(gpu / "06_table1_perplexity", {}, [check("T1.close", "close", paper="p", ours="o", holds=True, rule="r")],
                  title="t")
    (gpu / "06_table1_perplexity.ipynb").write_text("{}")
    write_results(cpu / "03_theorem_b1", {}, [check("B1.deg", "deg", paper="p", ours="o", holds=False, rule="r",
                                                    kind="finding")], title="t")
    (cpu / "03_theorem_b1.ipynb").write_text("{}")
    table = report.status_table([gpu, cpu])
    assert "| Table 1 (perplexity) | `06_table1_perplexity` | gpu | 1 reproduced | T1.close: reproduced |" in table
    assert "`03_theorem_b1` | cpu | 1 finding |" in table
    assert "`07_table2_ruler` | - | not run |" in table
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.STATUS_BEGIN}\nold\n{report.STATUS_END}\nrest\n")
    report.update_readme(readme, [gpu, cpu])
    text = readme.read_text()
    assert "old" not in text and "T1.close: reproduced" in text and text.endswith("rest\n")

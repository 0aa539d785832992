"""Recompute the claims of committed GPU results with the current rules, without re-running anything.

    python scripts/reclaim.py outputs/gpu

Notebooks 08 and 09 cannot run on a CPU machine without replacing their GPU numbers, so when a claim rule or a
threshold changes (issue 11 set new kernel targets) their ``results.json`` claims and ``summary.md`` are
recomputed here from the stored numbers: 08 by ``kernels.benchmark.kernel_claims`` (+ ``sweep_claims`` of the
side-by-side sweep files beside it), 09 by ``lib.latency.figure4a_claims``. The numbers are untouched; the notes
after the claims table of ``summary.md`` are kept, and a line says the claims were recomputed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib.claims import summary_markdown, validate  # noqa: E402


def _notes(summary: Path) -> list[str]:
    """The free notes after the claims table of an existing summary.md."""
    if not summary.exists():
        return []
    lines = summary.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("| claim |")), None)
    if start is None:
        return []
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    rest = [line for line in lines[end:] if not line.startswith("Claims recomputed")]
    return ["\n".join(rest).strip("\n")] if any(line.strip() for line in rest) else []


def reclaim(folder: Path, claims_fn, title_fallback: str) -> list[dict]:
    res_path, summary = folder / "results.json", folder / "summary.md"
    results = json.loads(res_path.read_text())
    claims = validate(claims_fn({k: v for k, v in results.items() if k != "claims"}))
    title = summary.read_text().splitlines()[0].lstrip("# ") if summary.exists() else title_fallback
    notes = _notes(summary) + ["Claims recomputed from the numbers above by `scripts/reclaim.py` with the rules "
                               "of the code that committed this file (no re-run)."]
    results["claims"] = claims
    res_path.write_text(json.dumps(results, indent=2) + "\n")
    summary.write_text(summary_markdown(title, claims, notes))
    return claims


def main(argv=None) -> int:
    out = Path((argv or sys.argv[1:] or ["outputs/gpu"])[0])
    from kernels import benchmark as kb
    from lib import latency

    # the side-by-side sweeps of issue 11, in notebook 08's order: Qwen2-7B shape, then SmolLM2's (head dim 64)
    sweeps = [json.loads(p.read_text()) for p in (out / "08_figure4b_kernels_issue11_sweep.json",
                                                  out / "08_figure4b_kernels_issue11_d64.json") if p.exists()]

    def k08(r):
        return (kb.kernel_claims(r, errors=r.get("errors"), errors_device=r.get("device"))
                + [c for sweep in sweeps for c in kb.sweep_claims(sweep)])

    for name, fn, title in (("08_figure4b_kernels", k08, "08 · Figure 4b: attention kernel latency"),
                            ("09_figure4a_latency", latency.figure4a_claims,
                             "Figure 4a: end-to-end latency (Qwen2-7B shape)")):
        if (out / name / "results.json").exists():
            claims = reclaim(out / name, fn, title)
            print(name, ", ".join(f"{c['id']}: {c['verdict']}" for c in claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())

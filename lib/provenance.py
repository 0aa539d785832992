"""Provenance stamped beside every result: commit, device, versions, parameters.

Notebooks call ``write_provenance(output_dir, params)`` once, and save every
figure through ``save_figure`` so it lands in a file as well as in the
executed notebook.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("torch", "triton", "transformers", "datasets", "numpy", "scipy", "pandas", "matplotlib", "seaborn", "papermill")


def git_commit() -> str:
    """HEAD commit of the repository (with '+dirty' if the tree has changes), or 'unknown'."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except Exception:
        return os.environ.get("POWERATTN_COMMIT", "unknown")


def source_digest() -> str:
    """SHA-256 over the code that produced a result (every .py under lib/ and kernels/, path and
    content). Machines without .git (the GPU runner gets a bare copy of the tree) still record which
    code ran; recompute it on any checkout to find the matching commit."""
    import hashlib

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(p for d in ("lib", "kernels") for p in (root / d).rglob("*.py")):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def device_info() -> dict:
    info = {"host": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
            "cpu_count": os.cpu_count()}
    try:
        import torch

        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                        sm_count=p.multi_processor_count, cuda=torch.version.cuda)
        else:
            info.update(gpu=None)
    except Exception as e:  # torch missing or broken: still record the rest
        info.update(gpu=None, torch_error=repr(e))
    return info


def versions() -> dict:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(params: dict | None = None) -> dict:
    record = {
        "commit": git_commit(),
        "source_digest": source_digest(),
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": versions(),
        "parameters": params or {},
        "argv": sys.argv,
    }
    tiles = os.environ.get("POWERATTN_TILES")
    if tiles:  # kernel tile-table entries replaced for this run (kernels.tiles): what the kernels ran with
        try:
            record["tile_overrides"] = json.loads(Path(tiles).read_text())
        except (OSError, ValueError) as e:
            record["tile_overrides"] = f"unreadable {tiles}: {e}"
    return record


def write_provenance(output_dir, params: dict | None = None, name: str = "provenance.json") -> dict:
    """Write ``provenance.json`` into ``output_dir`` (created if needed) and return it."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    record = provenance(params)
    (out / name).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def save_figure(fig, output_dir, name: str, formats=("png",), dpi: int = 130):
    """Save ``fig`` as ``output_dir/name.<fmt>`` for each format; returns the paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out / f"{name}.{fmt}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    return paths


def save_json(obj, output_dir, name: str):
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (name if name.endswith(".json") else f"{name}.json")
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path

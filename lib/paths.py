"""Where the project keeps things on disk: the one place for cache paths.

``$POWERATTN_CACHE`` or ``<repo>/.cache`` (git-ignored) holds downloaded corpora,
converted models, trained checkpoints and evaluation records. Results that
readers need live under ``outputs/`` and are committed.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE_ENV = "POWERATTN_CACHE"


def cache_root() -> Path:
    """``$POWERATTN_CACHE`` or ``<repo>/.cache``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else REPO / ".cache"


def private_tmp(path) -> Path:
    """A temporary name beside ``path`` that no other process or thread uses: write there, then
    ``replace`` it onto ``path``. Two processes filling the same cache entry (two notebooks, two test
    workers) then each replace a complete file instead of one removing the other's half-written one."""
    import threading
    import time

    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{time.monotonic_ns()}.tmp")


@contextlib.contextmanager
def atomic_file(path):
    """``with atomic_file(path) as tmp:`` write ``tmp`` (a ``private_tmp`` name); on success it replaces ``path``
    in one step, on error it is removed. Readers never see a half-written ``path``."""
    tmp = private_tmp(path)
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_dir(*parts: str) -> Path:
    """A sub-folder of the cache (created): ``cache_dir("models")``, ``cache_dir("corpora")``..."""
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


__all__ = ["CACHE_ENV", "REPO", "atomic_file", "cache_dir", "cache_root", "private_tmp"]

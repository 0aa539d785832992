"""Output allocation for the kernels, with an opt-in poison for tests.

The index tables the kernels read (per query block its key blocks, full ones
first; the dK/dV work items; decode rows) belong to ``lib.masks.BlockLayout``
(``layout.tables(device)``, ``layout.decode_plan(T, device)``). What is left
here is how outputs are allocated: ``empty`` is ``torch.empty``, except inside
``poisoned_outputs()``, where every kernel output starts as NaN so that an
element a kernel forgets to write shows up instead of hiding as stale memory.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

_POISON = contextvars.ContextVar("kernels_poison_outputs", default=False)


@contextlib.contextmanager
def poisoned_outputs(enabled: bool = True):
    """Fill every kernel output with NaN before launch while the block runs (tests, GPU checks)."""
    token = _POISON.set(bool(enabled))
    try:
        yield
    finally:
        _POISON.reset(token)


def poisoning() -> bool:
    return _POISON.get()


def empty(*shape, device, dtype):
    if _POISON.get():
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)

"""Block-sparse causal attention for the patterns of ``lib.masks``.

Public API (other notebooks, ``lib/`` helpers and outside checks call exactly these)::

    sparse_attention(q, k, v, pattern, block_size=None, backend="auto", *,
                     scale=None, return_lse=False, kernel_config=None, **config)
        Prefill / training. q ``[B, Hq, S, D]``, k and v ``[B, Hkv, S, D]``
        (``Hq`` a multiple of ``Hkv``: GQA). Query ``i`` sees key ``j`` iff
        ``i >= j`` and the pattern's block layout selects block
        ``(i // block_size, j // block_size)``. Returns ``q``'s shape and dtype
        (and the natural-log LSE ``[B, Hq, S]`` float32 with ``return_lse``).
        Differentiable in q, k, v on every backend.

    sparse_decode(q, k_cache, v_cache, pattern, block_size=None, backend="auto", *,
                  scale=None, kernel_config=None, **config)
        Decode: q ``[B, Hq, T, D]`` holds the ``T`` newest tokens, which are the
        LAST ``T`` positions of the cache (k_cache/v_cache ``[B, Hkv, S, D]``
        already contain them), i.e. query ``t`` sits at position ``S - T + t``.
        Same mask as ``sparse_attention`` restricted to those rows. The Triton
        path reads only the key blocks selected for those positions; it is for
        inference (no gradient). For a preallocated cache pass a slice
        ``k_cache[:, :, :length]`` (or see ``kernels.decode.decode_at_position``).

``pattern`` is one of

* a name from ``lib.masks.NAMES`` (the paper's six patterns ``lib.masks.PATTERNS`` plus
  ``"distance_set"``), with its config keywords in ``**config``, in blocks (e.g. ``window=5,
  sink=1``; ``lib.masks.section41_config(name, num_blocks)`` gives the paper's Section 4.1 ones);
* a bool block layout ``[nb, nb]`` with ``nb = ceil(S / block_size)`` (blocks above the diagonal
  are ignored: token causality always applies);
* a ``lib.masks.BlockLayout`` (``lib.masks.layout(...)``), built for this sequence length.

``block_size`` (tokens per mask block) defaults to 256 for a name or a bool layout and to the
layout's own block size for a ``BlockLayout`` (``kernels.as_layout``). ``backend``: ``"auto"`` =
Triton on CUDA, reference elsewhere; ``"triton"`` forces the Triton kernels (on CPU only through
the interpreter, ``TRITON_INTERPRET=1`` set before triton is imported); ``"reference"`` =
``kernels.reference`` (dense masked, float32 or higher). ``kernel_config`` overrides the Triton
tile settings of ``kernels.tiles`` (tables of ``triton.Config`` per kernel, head dim and dtype;
the defaults are the benchmarked ones): a dict with keys ``"fwd"``, ``"dq"``, ``"dkdv"``,
``"decode"`` (each a ``triton.Config`` or a dict of the settings to change) and ``"bwd_chunk"``;
unknown keys raise ``ValueError``. Bad input raises ``ValueError``/``TypeError`` before anything
is launched.

Example (small sizes; runs as written on a GPU, and on a CPU through the reference backend;
``tests/test_kernels.py`` executes it)::

    import torch
    import triton

    import kernels
    from lib import masks

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    S, block = 512, 64                                    # 8 mask blocks of 64 tokens
    q = torch.randn(1, 4, S, 64, device=device, dtype=dtype, requires_grad=True)  # 4 query heads,
    k = torch.randn(1, 2, S, 64, device=device, dtype=dtype, requires_grad=True)  # 2 key/value heads (GQA)
    v = torch.randn(1, 2, S, 64, device=device, dtype=dtype, requires_grad=True)

    out = kernels.sparse_attention(q, k, v, "power", block)   # the pattern's default (Section 4.1) budget
    out.sum().backward()                                       # gradients for q, k and v

    cfg = masks.section41_config("stride_slash", num_blocks=S // block)
    out = kernels.sparse_attention(q, k, v, "stride_slash", block, **cfg)

    layout = masks.layout("power", S, block, window=2)         # a BlockLayout: block size comes with it
    out, lse = kernels.sparse_attention(q, k, v, layout, return_lse=True)

    tiles = {"fwd": triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
             "dkdv": {"BLOCK_N": 32}, "bwd_chunk": 8}        # Triton tile overrides (kernels.tiles)
    out = kernels.sparse_attention(q, k, v, "power", block, kernel_config=tiles)

    with torch.no_grad():                                      # decode the last token against the cache
        new = kernels.sparse_decode(q[:, :, -1:], k, v, "power", block, kernel_config={"decode": {"BLOCK_N": 32}})
    assert new.shape == (1, 4, 1, 64)
"""
from __future__ import annotations

import os

import torch

from lib import masks as _masks

from .reference import reference_attention

BACKENDS = ("auto", "triton", "reference")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
REFERENCE_DTYPES = TRITON_DTYPES + (torch.float64,)
TRITON_HEAD_DIMS = (16, 32, 64, 128)
MAX_DECODE_TOKENS = 16


def as_layout(pattern, seq_len: int, block_size=None, **config) -> _masks.BlockLayout:
    """The ``BlockLayout`` for ``pattern`` at ``seq_len`` (a name, a bool ``[nb, nb]`` layout or a
    ``BlockLayout``); names and configs are validated here, once (``lib.masks.layout``).

    ``block_size`` None means the layout's own for a ``BlockLayout``, 256 otherwise.
    """
    if isinstance(pattern, _masks.BlockLayout):
        block_size = pattern.block_size if block_size is None else block_size
    elif block_size is None:
        block_size = 256
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return _masks.layout(pattern, seq_len, block_size, **config)


def get_layout(pattern, seq_len: int, block_size: int = 256, **config) -> torch.Tensor:
    """Causal bool block layout ``[nb, nb]`` (CPU), ``nb = ceil(seq_len / block_size)``."""
    return as_layout(pattern, seq_len, block_size, **config).to_dense()


def _check_backend(backend, device):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" else "reference"
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError("backend='triton' on CPU needs the Triton interpreter: set TRITON_INTERPRET=1 before importing triton")
    return backend


def _check_tensors(q, k, v, backend, names=("q", "k", "v")):
    for name, t in zip(names, (q, k, v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [batch, heads, seq, head_dim], got shape {tuple(t.shape)}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if k.shape != v.shape:
        raise ValueError(f"{names[1]} and {names[2]} shapes differ: {tuple(k.shape)} vs {tuple(v.shape)}")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"batch sizes differ: {names[0]} {q.shape[0]} vs {names[1]} {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"head dims differ: {names[0]} {q.shape[3]} vs {names[1]} {k.shape[3]}")
    if k.shape[1] == 0 or q.shape[1] % k.shape[1] != 0:
        raise ValueError(f"query heads ({q.shape[1]}) must be a positive multiple of key/value heads ({k.shape[1]})")
    if q.shape[2] == 0 or k.shape[2] == 0:
        raise ValueError("sequence length must be at least 1")
    if backend == "triton":
        if q.dtype not in TRITON_DTYPES:
            raise TypeError(f"the Triton kernels take {[str(d) for d in TRITON_DTYPES]}, got {q.dtype}")
        if q.shape[3] not in TRITON_HEAD_DIMS:
            raise ValueError(f"the Triton kernels take head_dim in {TRITON_HEAD_DIMS}, got {q.shape[3]}")
    elif q.dtype not in REFERENCE_DTYPES:
        raise TypeError(f"the reference takes {[str(d) for d in REFERENCE_DTYPES]}, got {q.dtype}")


def sparse_attention(q, k, v, pattern, block_size=None, backend="auto", *, scale=None,
                     return_lse=False, kernel_config=None, **config):
    """Block-sparse causal attention (see the module docstring for the contract)."""
    backend = _check_backend(backend, q.device if isinstance(q, torch.Tensor) else torch.device("cpu"))
    _check_tensors(q, k, v, backend)
    if q.shape[2] != k.shape[2]:
        raise ValueError(f"prefill needs q and k of one length, got {q.shape[2]} and {k.shape[2]} (use sparse_decode for new tokens)")
    layout = as_layout(pattern, q.shape[2], block_size, **config)
    _check_block_size(layout.block_size, backend)
    _check_kernel_config(kernel_config)
    if backend == "reference":
        return reference_attention(q, k, v, layout.to_dense(), layout.block_size, scale=scale, return_lse=return_lse)
    from .autograd import triton_sparse_attention

    return triton_sparse_attention(q, k, v, layout, scale=scale, return_lse=return_lse, kernel_config=kernel_config)


def sparse_decode(q, k_cache, v_cache, pattern, block_size=None, backend="auto", *, scale=None,
                  kernel_config=None, **config):
    """Attention of the ``T`` newest tokens (the cache's last ``T`` positions) to the cache."""
    backend = _check_backend(backend, q.device if isinstance(q, torch.Tensor) else torch.device("cpu"))
    _check_tensors(q, k_cache, v_cache, backend, names=("q", "k_cache", "v_cache"))
    T, S = q.shape[2], k_cache.shape[2]
    if T > S:
        raise ValueError(f"q has {T} tokens but the cache only {S}: the new tokens must already be in the cache")
    if backend == "triton" and T > MAX_DECODE_TOKENS:
        raise ValueError(f"the Triton decode kernel takes at most {MAX_DECODE_TOKENS} new tokens, got {T} (use sparse_attention)")
    layout = as_layout(pattern, S, block_size, **config)
    _check_block_size(layout.block_size, backend)
    _check_kernel_config(kernel_config)
    if backend == "reference":
        return reference_attention(q, k_cache, v_cache, layout.to_dense(), layout.block_size, scale=scale,
                                   q_offset=S - T)
    from .decode import triton_sparse_decode

    return triton_sparse_decode(q, k_cache, v_cache, layout, scale=scale, kernel_config=kernel_config)


def _check_block_size(block_size, backend):
    if backend == "triton" and (block_size < 16 or block_size & (block_size - 1)):
        raise ValueError(f"the Triton kernels need block_size a power of two >= 16, got {block_size}")


def _check_kernel_config(kernel_config):
    """Validate tile overrides on every backend (a typo should not pass silently on CPU);
    ``kernels.tiles`` imports triton, so only when there is something to check."""
    if kernel_config is not None:
        from .tiles import check_overrides

        check_overrides(kernel_config)


__all__ = ["sparse_attention", "sparse_decode", "reference_attention", "as_layout", "get_layout", "BACKENDS"]


from .context_parallel import context_parallel_attention  # noqa: E402  (sequence-parallel entry point, issue 12)

__all__ += ["context_parallel_attention"]

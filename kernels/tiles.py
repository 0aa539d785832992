"""Tile settings of the Triton kernels: ``triton.Config`` tables keyed by (kernel, head dim, dtype).

``TILES[(kernel, head_dim, dtype)]`` is the setting a launch starts from; ``tiles_for`` looks it up,
applies a caller's override and the caps every launch needs. Kernels and their settings:

=========  ===========================================  =====================================
kernel     ``Config.kwargs``                            also
=========  ===========================================  =====================================
``fwd``    ``BLOCK_M``, ``BLOCK_N``, ``USE_TMA`` (0/1),     ``num_warps``, ``num_stages``
           ``WARP_SPEC`` (0/1)
``dq``     ``BLOCK_M``, ``BLOCK_N``, ``USE_TMA``        ``num_warps``, ``num_stages``
``dkdv``   ``BLOCK_M``, ``BLOCK_N``, ``USE_TMA``        ``num_warps``, ``num_stages``
``decode`` ``BLOCK_N``, ``NUM_SPLITS`` (0 = auto),      ``num_warps``, ``num_stages``
           ``FUSED`` (0/1), ``PDL`` (0/1/2)
=========  ===========================================  =====================================

``BLOCK_M`` is the query tile and ``BLOCK_N`` the key tile (rows of a program); ``USE_TMA`` loads
tiles through tensor descriptors (Hopper's bulk copy engine), and falls back to pointer loads by
itself when a tensor is not 16-byte aligned. ``NUM_SPLITS``: decode programs per key/value head
(auto: two waves of programs over the GPU). ``WARP_SPEC``: the forward's unmasked loop is compiled
with Triton's warp specialisation (``tl.range(..., warp_specialize=True)``) and its diagonal tiles
are unrolled, so the kernel has a single loop (Triton 3.6 makes no warp partition for sm_90, and on
the H100 this variant measured 0.88-0.99x the table's: opt-in, off by default). ``FUSED``: decode merges its splits in the last
program of each key/value head instead of a second kernel (measured slower on the H100: opt-in). ``PDL``:
programmatic dependent launch on Hopper (1: the merge kernel is launched while the split kernel runs; 2: the
split kernel too, behind whatever ran before it; ignored on older GPUs and in the interpreter). The table uses 2:
on the H100 it measured 1.10-1.21x faster at batch 1 than no PDL, and 1.01-1.04x at batch 16. Where each entry comes from:
kernels/NOTES.md, "Refactor (issue 8)" and "Issue 11".

``POWERATTN_TILES=<file.json>`` (read once, at import) replaces table entries for a tuning run:
a list of ``{"kernel": .., "head_dim": .., "dtype": .., "kwargs": {..}, "num_warps": .., "num_stages": ..}``
(``scripts/kernel_check.py --variants`` writes one). The entries it set are in ``FILE_OVERRIDES``.

Overrides (``kernel_config=`` of ``kernels.sparse_attention`` / ``kernels.sparse_decode``) are a
dict with any of the keys ``OVERRIDE_KEYS``::

    kernel_config = {
        "fwd": triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2),
        "dkdv": {"BLOCK_N": 32},            # a plain dict changes only the settings it names
        "bwd_chunk": 8,                     # query blocks per dK/dV work item
    }

A ``triton.Config`` replaces ``num_warps`` and ``num_stages`` (its own defaults, 4 and 3, when
not given) and the kwargs it names (the others keep the table's values); a plain dict changes only
the keys it names (kwargs names, ``num_warps``, ``num_stages``). Both entry points accept the same
dict and use the keys they launch (``sparse_attention``: fwd, dq, dkdv, bwd_chunk; ``sparse_decode``:
decode), so one ``kernel_config`` can be passed to both.
"""
from __future__ import annotations

import functools
import itertools
import json
import os

import torch
import triton

KERNELS = ("fwd", "dq", "dkdv", "decode")
HEAD_DIMS = (16, 32, 64, 128)
DTYPES = ("bf16", "fp16", "fp32")
#: Config.kwargs each kernel takes (besides num_warps and num_stages).
SETTINGS = {
    "fwd": ("BLOCK_M", "BLOCK_N", "USE_TMA", "WARP_SPEC"),
    "dq": ("BLOCK_M", "BLOCK_N", "USE_TMA"),
    "dkdv": ("BLOCK_M", "BLOCK_N", "USE_TMA"),
    "decode": ("BLOCK_N", "NUM_SPLITS", "FUSED", "PDL"),
}
OVERRIDE_KEYS = KERNELS + ("bwd_chunk",)
BWD_CHUNK = 16  # query blocks per dK/dV work item (H100 sweep: 8 / 16 / 32 -> 12.54 / 12.51 / 13.11 ms)

_TORCH_DTYPES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

# The H100 sweeps on the Qwen2-7B shape (head dim 128, bf16; kernels/NOTES.md) set every default.
_FWD = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "USE_TMA": 1, "WARP_SPEC": 0}, num_warps=8, num_stages=3)
_DQ = triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "USE_TMA": 1}, num_warps=8, num_stages=2)
_DKDV = triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "USE_TMA": 1}, num_warps=4, num_stages=2)
# Decode PDL=2 (programmatic dependent launch of both kernels; ignored before Hopper): H100, issue 11 session 5,
# 1.10-1.21x at batch 1 and 1.01-1.04x at batch 16 against PDL=0, both shapes (kernels/NOTES.md).
_DECODE = triton.Config({"BLOCK_N": 64, "NUM_SPLITS": 0, "FUSED": 0, "PDL": 2}, num_warps=4, num_stages=3)
# Head dim 64 forward, measured on SmolLM2's shape (9 query / 3 KV heads, bf16, H100): 1.25x faster
# than _FWD (0.49 vs 0.61 ms at 32K, 2.24 vs 2.85 ms at 128K). At head dim 128 the same tile was
# +5% at 32K and -5% at 128K, so head dim 128 keeps _FWD.
_FWD_D64_HALF = triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "USE_TMA": 1, "WARP_SPEC": 0}, num_warps=4,
                              num_stages=2)

_DEFAULTS = {"fwd": _FWD, "dq": _DQ, "dkdv": _DKDV, "decode": _DECODE}
TILES: dict[tuple[str, int, str], triton.Config] = {
    (kernel, head_dim, dtype): _DEFAULTS[kernel]
    for kernel, head_dim, dtype in itertools.product(KERNELS, HEAD_DIMS, DTYPES)
}
TILES[("fwd", 64, "bf16")] = _FWD_D64_HALF
TILES[("fwd", 64, "fp16")] = _FWD_D64_HALF


def _file_overrides(path) -> dict:
    """Table entries from a ``POWERATTN_TILES`` JSON file (see the module docstring), validated."""
    try:
        entries = json.loads(open(path).read())
    except (OSError, ValueError) as e:
        raise ValueError(f"POWERATTN_TILES={path}: cannot read a JSON list of tile entries ({e})") from None
    out = {}
    for e in entries if isinstance(entries, list) else [None]:
        try:
            key = (e["kernel"], int(e["head_dim"]), dtype_name(e["dtype"]))
            if key not in TILES:
                raise KeyError(key)
            cfg = triton.Config(dict(TILES[key].kwargs, **e.get("kwargs", {})),
                                num_warps=e.get("num_warps", TILES[key].num_warps),
                                num_stages=e.get("num_stages", TILES[key].num_stages))
            _check_one(key[0], cfg)
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"POWERATTN_TILES={path}: bad entry {e!r} ({err})") from None
        out[key] = cfg
    return out


def dtype_name(dtype) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"`` for a torch dtype (or one of those names)."""
    if isinstance(dtype, str) and dtype in DTYPES:
        return dtype
    if dtype in _TORCH_DTYPES:
        return _TORCH_DTYPES[dtype]
    raise ValueError(f"the Triton kernels take dtypes {list(DTYPES)}, got {dtype!r}")


def check_overrides(kernel_config) -> dict:
    """Validate a ``kernel_config`` (see the module docstring); returns it as a dict ({} for None)."""
    if kernel_config is None:
        return {}
    if not isinstance(kernel_config, dict):
        raise TypeError(f"kernel_config must be a dict with keys from {list(OVERRIDE_KEYS)}, "
                        f"got {type(kernel_config).__name__}")
    unknown = sorted(set(kernel_config) - set(OVERRIDE_KEYS), key=str)
    if unknown:
        old = [k.split("_", 1) for k in unknown if isinstance(k, str) and k.split("_", 1)[0] in KERNELS]
        hint = ""
        if old:  # the prefixed keys of the first API: point at the new spelling
            kernel, setting = old[0]
            new = {"tma": "USE_TMA"}.get(setting, setting)
            hint = f" ('{kernel}_{setting}' is the old form of {{'{kernel}': {{'{new}': ...}}}})"
        raise ValueError(f"unknown kernel_config keys {unknown}; accepted: {list(KERNELS)} (each a triton.Config "
                         f"or a dict of its settings) and 'bwd_chunk' (query blocks per dK/dV work item){hint}")
    for kernel in KERNELS:
        if kernel in kernel_config:
            _check_one(kernel, kernel_config[kernel])
    chunk = kernel_config.get("bwd_chunk", BWD_CHUNK)
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"kernel_config['bwd_chunk'] must be a positive integer, got {chunk!r}")
    return kernel_config


def _check_one(kernel: str, override) -> None:
    if isinstance(override, triton.Config):
        names = set(override.kwargs)
    elif isinstance(override, dict):
        names = set(override) - {"num_warps", "num_stages"}
    else:
        raise TypeError(f"kernel_config[{kernel!r}] must be a triton.Config or a dict, got {type(override).__name__}")
    unknown = sorted(names - set(SETTINGS[kernel]), key=str)
    if unknown:
        extra = "" if isinstance(override, triton.Config) else " (and num_warps, num_stages)"
        raise ValueError(f"unknown {kernel} settings {unknown} in kernel_config; accepted: "
                         f"{list(SETTINGS[kernel])}{extra}")


def tiles_for(kernel: str, head_dim: int, dtype, block_size: int, override=None) -> triton.Config:
    """The ``triton.Config`` a launch of ``kernel`` uses (read-only; the table itself is never modified).

    ``override``: a ``triton.Config`` or a dict for this kernel (``kernel_config[kernel]``). Caps:
    fp32 with head dim > 64 uses tiles at most 64 wide (fp32 tiles take twice the shared memory of
    half-precision ones, and 128-wide tiles do not fit), and no tile is wider than ``block_size``
    (a program never spans two mask blocks). Tiles must end up powers of two >= 16. Without an
    override the answer is cached: decoding asks once per layer and step.
    """
    if override is None:
        return _cached_tiles(kernel, head_dim, dtype_name(dtype), block_size)
    return _tiles(kernel, head_dim, dtype, block_size, override)


@functools.lru_cache(maxsize=256)
def _cached_tiles(kernel: str, head_dim: int, dtype: str, block_size: int) -> triton.Config:
    return _tiles(kernel, head_dim, dtype, block_size, None)


def _tiles(kernel, head_dim, dtype, block_size, override) -> triton.Config:
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; the kernels are {list(KERNELS)}")
    dt = dtype_name(dtype)
    if (kernel, head_dim, dt) not in TILES:
        raise ValueError(f"no tile setting for head dim {head_dim}: the Triton kernels take head dims {list(HEAD_DIMS)}")
    base = TILES[(kernel, head_dim, dt)]
    kwargs, num_warps, num_stages = dict(base.kwargs), base.num_warps, base.num_stages
    if override is not None:
        _check_one(kernel, override)
        if isinstance(override, triton.Config):
            kwargs.update(override.kwargs)
            num_warps, num_stages = override.num_warps, override.num_stages
        else:
            kwargs.update({k: v for k, v in override.items() if k in SETTINGS[kernel]})
            num_warps = override.get("num_warps", num_warps)
            num_stages = override.get("num_stages", num_stages)
    kwargs = {k: _int(f"{kernel} {k}", v) for k, v in kwargs.items()}
    for key in ("BLOCK_M", "BLOCK_N"):
        if key not in kwargs:
            continue
        if dt == "fp32" and head_dim > 64:
            kwargs[key] = min(kwargs[key], 64)
        kwargs[key] = min(kwargs[key], block_size)
        if kwargs[key] < 16 or kwargs[key] & (kwargs[key] - 1):
            raise ValueError(f"{kernel} {key} must be a power of two >= 16, got {kwargs[key]}")
    return triton.Config(kwargs, num_warps=_int(f"{kernel} num_warps", num_warps, 1),
                         num_stages=_int(f"{kernel} num_stages", num_stages, 1))


def use_tiles_file(path) -> dict:
    """Replace table entries with those of a tiles file (the ``POWERATTN_TILES`` format); returns them.
    Lookups made before see the new entries too (the lookup cache is cleared)."""
    entries = _file_overrides(path)
    TILES.update(entries)
    _cached_tiles.cache_clear()
    return entries


FILE_OVERRIDES = use_tiles_file(os.environ["POWERATTN_TILES"]) if os.environ.get("POWERATTN_TILES") else {}


def _int(name: str, value, lowest: int = 0) -> int:
    try:
        out = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if out != value or out < lowest:
        raise ValueError(f"{name} must be an integer >= {lowest}, got {value!r}")
    return out


__all__ = ["BWD_CHUNK", "DTYPES", "FILE_OVERRIDES", "HEAD_DIMS", "KERNELS", "OVERRIDE_KEYS", "SETTINGS", "TILES", "check_overrides", "use_tiles_file",
           "dtype_name", "tiles_for"]

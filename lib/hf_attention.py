"""Block-sparse attention as a drop-in for Hugging Face transformers models.

    from lib.hf_attention import use_sparse_attention
    model = use_sparse_attention(model, "power", block_size=256)   # any pattern of lib.masks
    model.generate(...)                                              # prefill + cached decoding

How it plugs in (transformers 5.x): every modern decoder calls its attention
through ``transformers.AttentionInterface`` under the name in
``config._attn_implementation``, and builds its mask through
``transformers.AttentionMaskInterface`` under the same name. We register
``block_sparse`` in both:

* the mask function never builds a [q, kv] mask: it checks that there is no
  padding (unsupported) and returns ``None``; the pattern is applied inside the
  attention function, on absolute positions;
* the attention function reads its settings from ``module.config.block_sparse``
  (a plain dict, saved with the config) and dispatches:
    - prefill (queries start at position 0):  ``kernels.sparse_attention``
      (or FlexAttention with a BlockMask built from the block layout, for
      ``backend="flex"``);
    - cached decoding (one query at the end of the cache): ``kernels.sparse_decode``,
      or (``decode="graph"``, or under CUDA-graph capture) a position-independent
      path: the query block's key blocks, a fixed count computed on the device,
      read by ``kernels.decode.decode_at_position`` (split-KV) (gather + SDPA on CPU);
    - anything else (a chunk of queries in the middle): dense SDPA with the
      token mask of those rows only (reference path).

Layers listed in ``full_layers`` (the Section 4.4 hybrid) use causal SDPA.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from lib import masks

ATTN_IMPLEMENTATION = "block_sparse"
CONFIG_KEY = "block_sparse"
BACKENDS = ("auto", "triton", "reference", "flex")

_registered = False


# ----------------------------------------------------------------------------- settings
def hybrid_full_layers(num_layers: int, every: int = 7, full: int = 2) -> tuple[int, ...]:
    """Layer indices kept dense in the Section 4.4 hybrid.

    The paper keeps "2 full attention layers for every 7 layers" without saying
    where; we read it as groups of ``every`` consecutive layers whose last
    ``full`` layers are dense (28 layers -> layers 5, 6, 12, 13, 19, 20, 26, 27),
    which keeps the sparse layers of a group contiguous.
    """
    for name, value, low in (("num_layers", num_layers, 1), ("every", every, 1), ("full", full, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"hybrid_full_layers: {name} must be an integer >= {low}, got {value!r}")
    if full > every:
        raise ValueError(f"hybrid_full_layers: full={full} must be <= every={every}")
    return tuple(i for i in range(num_layers) if i % every >= every - full)


DECODE_PATHS = ("auto", "graph")


def make_settings(pattern, block_size=256, backend="auto", full_layers=(), max_context=None, decode="auto",
                  graph_kernel=True, **mask_config) -> dict:
    """Validated, JSON-serialisable settings stored as ``config.block_sparse``.

    ``graph_kernel``: on CUDA, the position-independent decode path reads the key blocks with the
    split-KV Triton kernel (True) or gathers them for SDPA (False, e.g. if the kernel check fails).
    """
    if not isinstance(pattern, str) or pattern not in masks.NAMES:
        raise ValueError(f"unknown pattern {pattern!r}; expected one of {list(masks.NAMES)}")
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {list(BACKENDS)}")
    if decode not in DECODE_PATHS:
        raise ValueError(f"unknown decode path {decode!r}; expected one of {list(DECODE_PATHS)}")
    cfg = masks.resolve(pattern, **mask_config)[1]  # raises on unknown keywords / bad values
    full_layers = tuple(int(i) for i in full_layers)
    if any(i < 0 for i in full_layers):
        raise ValueError(f"full_layers must be non-negative layer indices, got {full_layers}")
    if max_context is not None and (not isinstance(max_context, int) or max_context < 1):
        raise ValueError(f"max_context must be a positive integer or None, got {max_context!r}")
    if not isinstance(graph_kernel, bool):
        raise ValueError(f"graph_kernel must be True or False, got {graph_kernel!r}")
    return dict(pattern=pattern, block_size=block_size, backend=backend, full_layers=list(full_layers),
                max_context=max_context, decode=decode, graph_kernel=graph_kernel, mask_config=cfg)


def _settings(module) -> dict:
    config = getattr(module, "config", None)
    settings = getattr(config, CONFIG_KEY, None)
    if not isinstance(settings, dict):
        raise ValueError(
            f"attn_implementation={ATTN_IMPLEMENTATION!r} needs config.{CONFIG_KEY} = "
            "lib.hf_attention.make_settings(pattern, ...); use use_sparse_attention(model, pattern) "
            "or set it on the config before from_pretrained"
        )
    return settings


# ----------------------------------------------------------------------------- mask interface
def block_sparse_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                      attention_mask=None, **kwargs):
    """Mask-interface entry: builds nothing; the pattern lives in the attention function.

    A 2D padding mask with any zero is refused (left/right padding would shift
    absolute positions, which the block pattern is defined on).
    """
    if attention_mask is not None:
        capturing = attention_mask.is_cuda and torch.cuda.is_current_stream_capturing()
        if not capturing and not torch.compiler.is_compiling() and not bool(attention_mask.all()):
            raise ValueError(
                f"{ATTN_IMPLEMENTATION}: padding masks are not supported (the pattern is defined on absolute "
                "positions); run unpadded sequences, one length per batch"
            )
    return None


# ----------------------------------------------------------------------------- attention interface
def block_sparse_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface entry. q [B, Hq, Sq, D], k/v [B, Hkv, Skv, D] -> ([B, Sq, Hq, D], None)."""
    if dropout:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: attention dropout is not supported (got {dropout})")
    if attention_mask is not None:
        raise ValueError(f"{ATTN_IMPLEMENTATION}: got a prepared attention mask; padding/custom masks are unsupported")
    s = _settings(module)
    kv_len = key.shape[2]
    limit = s.get("max_context")
    if limit is not None and kv_len > limit:
        raise ValueError(
            f"{ATTN_IMPLEMENTATION}: key/value length {kv_len} exceeds max_context={limit} "
            f"(set max_context in use_sparse_attention to allow longer contexts)"
        )
    query, key, value = _common_dtype(query, key, value)
    pattern = s["pattern"]
    if getattr(module, "layer_idx", None) in set(s["full_layers"]):
        pattern = "full"
    out = sparse_attention_at(query, key, value, pattern, s["block_size"], s["backend"], s["mask_config"],
                              positions=kwargs.get("position_ids"), scale=scaling, decode=s.get("decode", "auto"),
                              graph_kernel=s.get("graph_kernel", True))
    return out.transpose(1, 2).contiguous(), None


def _common_dtype(q, k, v):
    """One dtype for q, k, v: under autocast the model's rotary embedding returns float32 q/k next to a
    bf16 v; attention then runs in the autocast dtype (what SDPA would do), else in the promoted one."""
    dev = q.device.type
    if torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
    elif q.dtype == k.dtype == v.dtype:
        return q, k, v
    else:
        dt = torch.promote_types(torch.promote_types(q.dtype, k.dtype), v.dtype)
    return q.to(dt), k.to(dt), v.to(dt)


def sparse_attention_at(q, k, v, pattern, block_size, backend, mask_config, positions=None, scale=None,
                        decode="auto", graph_kernel=True):
    """Attention of queries at absolute ``positions`` over keys at positions 0..Skv-1.

    ``positions``: [B, Sq] or [Sq] int tensor (transformers' position_ids), or
    None meaning the queries are the last Sq positions of the key sequence.
    Keys past the last query position (unused slots of a static cache) are masked.
    ``decode``: "auto" (kernels.sparse_decode where possible) or "graph" (always the
    position-independent path: what a CUDA-graph decode loop captures).
    """
    q_len, kv_len = q.shape[2], k.shape[2]
    if scale is not None and not math.isclose(scale, q.shape[-1] ** -0.5, rel_tol=1e-6):
        # Every path below uses 1/sqrt(D); fold any other scale into q.
        q = q * (scale * math.sqrt(q.shape[-1]))
    if positions is not None:
        positions = positions.reshape(-1, q_len)[0]
    if q_len > 1:
        start = int(positions[0]) if positions is not None else kv_len - q_len
        if start == 0:  # prefill: keys beyond q_len are empty cache slots
            return _prefill(q, k[:, :, :q_len], v[:, :, :q_len], pattern, block_size, backend, mask_config)
        return _rows_reference(q, k[:, :, :start + q_len], v[:, :, :start + q_len], start, pattern,
                               block_size, mask_config)
    if positions is None:
        positions = torch.full((1,), kv_len - 1, device=q.device, dtype=torch.long)
    return _decode(q, k, v, positions, pattern, block_size, backend, mask_config, decode, graph_kernel)


def _prefill(q, k, v, pattern, block_size, backend, cfg):
    if pattern == "full":
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=q.shape[1] != k.shape[1])
    if backend == "flex":
        return flex_sparse_attention(q, k, v, pattern, block_size, **cfg)
    kernels = _kernels()
    if kernels is None or not hasattr(kernels, "sparse_attention"):
        raise RuntimeError(
            f"{ATTN_IMPLEMENTATION}: kernels.sparse_attention is not available; use backend='flex' meanwhile"
        )
    return kernels.sparse_attention(q, k, v, pattern, block_size, backend=backend, **cfg)


def _rows_reference(q, k, v, start, pattern, block_size, cfg):
    """Queries at positions start..start+Sq-1 against keys 0..start+Sq-1, dense masked SDPA."""
    q_pos = torch.arange(start, start + q.shape[2], device=q.device)
    k_pos = torch.arange(k.shape[2], device=q.device)
    mask = masks.mask_mod(pattern, block_size, **cfg)(None, None, q_pos[:, None], k_pos[None, :])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=q.shape[1] != k.shape[1])


_index_memo: list = [None, None]  # (key, value): the step's key blocks, shared by all layers


def _step_blocks(positions, pos, kv_len, pattern, block_size, cfg):
    """Key blocks (fixed count) of the query at ``pos``; computed once per step and reused by every layer."""
    # transformers hands each layer a fresh view of the step's position_ids; views share storage and
    # version counter, so (storage, offset, version) identifies the step. The memo keeps the tensor
    # alive, so its storage address cannot be reused by another tensor meanwhile.
    try:
        version = positions._version  # bumps on in-place updates (a decode loop's position buffer)
    except RuntimeError:  # inference-mode tensors carry no version: no reuse
        version = None
    # Whether a CUDA graph is being captured is part of the key: blocks gathered by an eager call (a warm-up
    # step) must not be baked into a graph as constants; the capture gathers them again, as captured ops.
    capturing = positions.is_cuda and torch.cuda.is_current_stream_capturing()
    key = (positions.untyped_storage().data_ptr(), positions.storage_offset(), version, kv_len, pattern,
           block_size, masks.frozen_config(cfg), capturing)
    memo = _index_memo[0]
    if version is not None and memo is not None and memo[1:] == key:
        return _index_memo[1]
    if pattern == "full":
        blk = torch.arange(-(-kv_len // block_size), device=pos.device)
        valid = blk <= pos.reshape(()) // block_size
    else:  # the layout of the whole (static) cache; its rows, gathered on the device
        blk, valid = masks.layout(pattern, kv_len, block_size, **cfg).decode_rows(pos)
    _index_memo[:] = [(positions,) + key, (blk, valid)]  # positions: held only to pin its storage
    return blk, valid


def _decode(q, k, v, positions, pattern, block_size, backend, cfg, path="auto", graph_kernel=True):
    """One query per sequence at absolute position ``positions[0]`` (shared across the batch).

    path "auto", outside graph capture / compile, with a kernels backend:
    ``kernels.sparse_decode`` on the filled part of the cache (it needs the
    length as a Python int). Otherwise (path "graph", CUDA-graph capture, the
    FlexAttention variant): the position-independent path: the query block's key
    blocks (a fixed count, computed on the device) read by
    ``kernels.decode.decode_at_position``, the split-KV Triton kernel on CUDA, or gathered and fed to SDPA elsewhere.
    """
    kv_len = k.shape[2]
    pos = positions.reshape(-1)[:1]
    group = q.shape[1] // k.shape[1]
    capturing = (q.is_cuda and torch.cuda.is_current_stream_capturing()) or torch.compiler.is_compiling()
    kernels = _kernels()
    if (path == "auto" and not capturing and backend != "flex" and pattern != "full"
            and kernels is not None and hasattr(kernels, "sparse_decode")):
        length = int(pos) + 1
        return kernels.sparse_decode(q, k[:, :, :length], v[:, :, :length], pattern, block_size,
                                     backend=backend, **cfg)
    if pattern == "full" and path == "auto":
        mask = (torch.arange(kv_len, device=q.device) <= pos)[None, None, None, :]
        return _grouped_sdpa(q, k, v, mask, group)
    blk, valid = _step_blocks(positions, pos, kv_len, pattern, block_size, cfg)
    if q.is_cuda and graph_kernel and q.shape[2] == 1:
        from kernels.decode import decode_at_position

        return decode_at_position(q, k, v, blk, valid, pos, block_size)
    tok = (blk[:, None] * block_size + torch.arange(block_size, device=q.device)).reshape(-1)
    tok_ok = valid.repeat_interleave(block_size) & (tok <= pos) & (tok < kv_len)
    tok = tok.clamp(max=kv_len - 1)
    k_sel, v_sel = k.index_select(2, tok), v.index_select(2, tok)
    return _grouped_sdpa(q, k_sel, v_sel, tok_ok[None, None, None, :], group)


def _grouped_sdpa(q, k, v, mask, group):
    """GQA decode as plain multi-head SDPA: the ``group`` query heads of a KV head become its rows."""
    b, hq, t, d = q.shape
    qg = q.reshape(b, hq // group, group * t, d)
    out = F.scaled_dot_product_attention(qg, k, v, attn_mask=mask)
    return out.reshape(b, hq, t, d)


# ----------------------------------------------------------------------------- FlexAttention backend
@lru_cache(maxsize=1)
def _compiled_flex_attention():
    """FlexAttention compiled once per process (eager Flex materialises every score)."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


_flex_options: dict = {}  # kernel_options of every compiled FlexAttention call (set_flex_kernel_options)


def set_flex_kernel_options(options: dict | None) -> None:
    """``kernel_options`` for FlexAttention prefill from now on (None or {}: Flex's own choice).

    A latency comparison should give Flex its fastest configuration (notebook 08 sweeps
    ``kernels.benchmark.FLEX_CONFIGS``), not only its default.
    """
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"FlexAttention kernel_options must be a dict or None, got {type(options).__name__}")
    _flex_options.clear()
    _flex_options.update(options or {})


def flex_sparse_attention(q, k, v, pattern, block_size=256, **cfg):
    """Prefill through torch's FlexAttention with the pattern's BlockMask (compiled on GPU), with the
    ``kernel_options`` of ``set_flex_kernel_options`` on CUDA."""
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = masks.layout(pattern, q.shape[2], block_size, **cfg).to_flex_block_mask(q.device)
    if not q.is_cuda:
        return flex_attention(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])
    return _compiled_flex_attention()(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1],
                                      kernel_options=dict(_flex_options) or None)


# ----------------------------------------------------------------------------- registration / switching
def _kernels():
    try:
        import kernels
    except ImportError:
        return None
    return kernels


def register() -> None:
    """Register ``block_sparse`` with transformers' attention and mask interfaces (idempotent)."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface, AttentionMaskInterface

    AttentionInterface.register(ATTN_IMPLEMENTATION, block_sparse_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, block_sparse_mask)
    _registered = True


def use_sparse_attention(model, pattern, block_size=256, backend="auto", full_layers=(), max_context=None,
                         decode="auto", graph_kernel=True, **mask_config):
    """Switch a loaded transformers model to block-sparse attention with ``pattern``; returns the model.

    ``full_layers``: layer indices kept dense (see ``hybrid_full_layers``).
    ``max_context``: longest key sequence accepted (default: config.max_position_embeddings).
    ``decode``: "auto" (the kernels' decode entry when not under graph capture) or
    "graph" (always the position-independent path that a CUDA graph can capture; see ``_decode``).
    """
    register()
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise TypeError(f"use_sparse_attention needs a transformers PreTrainedModel, got {type(model).__name__}")
    supports = getattr(model, "_supports_attention_backend", False)
    can_set = getattr(model, "_can_set_attn_implementation", lambda: True)()
    if not supports or not can_set:
        raise TypeError(
            f"{type(model).__name__} does not route its attention through transformers' AttentionInterface "
            "(_supports_attention_backend is False), so its attention cannot be swapped"
        )
    if max_context is None:
        max_context = getattr(config, "max_position_embeddings", None)
    settings = make_settings(pattern, block_size, backend, full_layers, max_context, decode, graph_kernel,
                             **mask_config)
    num_layers = getattr(config, "num_hidden_layers", None)
    if num_layers is not None and any(i >= num_layers for i in settings["full_layers"]):
        raise ValueError(f"full_layers {settings['full_layers']} out of range for {num_layers} layers")
    setattr(config, CONFIG_KEY, settings)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if config._attn_implementation != ATTN_IMPLEMENTATION:
        raise TypeError(f"{type(model).__name__} refused attn_implementation={ATTN_IMPLEMENTATION!r}")
    return model


__all__ = [
    "ATTN_IMPLEMENTATION",
    "BACKENDS",
    "block_sparse_attention_forward",
    "block_sparse_mask",
    "flex_sparse_attention",
    "hybrid_full_layers",
    "make_settings",
    "register",
    "set_flex_kernel_options",
    "sparse_attention_at",
    "use_sparse_attention",
]


def check_decode_kernel(device="cuda", dtype=torch.bfloat16, batch=2, heads=(28, 4), head_dim=128, seq=5000,
                        block_size=256, pattern="power", seed=0, **cfg):
    """Relative error of the graph-safe decode kernel against its float64 reference, on fresh
    random inputs at several positions (the decode path checks this before relying on it)."""
    from kernels.decode import decode_at_position
    from kernels.reference import reference_decode_at_position

    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(batch, heads[0], 1, head_dim, generator=g).to(device, dtype)
    k = torch.randn(batch, heads[1], seq, head_dim, generator=g).to(device, dtype)
    v = torch.randn(batch, heads[1], seq, head_dim, generator=g).to(device, dtype)
    errs = []
    lay = masks.layout(pattern, seq, block_size, **cfg)
    for p in (seq - 1, seq // 2 + 7, block_size - 1, 3):
        pos = torch.tensor([p], device=device)
        blocks, valid = lay.decode_rows(pos)
        out = decode_at_position(q, k, v, blocks, valid, pos, block_size)
        ref = reference_decode_at_position(q, k, v, blocks, valid, pos, block_size)
        if not torch.isfinite(out).all():
            raise AssertionError(f"decode kernel produced non-finite values at position {p}")
        errs.append(float((out.double() - ref.double()).norm() / ref.double().norm()))
    return max(errs)

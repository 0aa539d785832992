"""End-to-end prefill / decode latency of a transformers decoder under each attention variant (Figure 4a).

One model object, one set of weights; only ``config._attn_implementation``
(and the block-sparse settings) change between variants, so every variant runs
the same non-attention code. Timing uses CUDA events on the GPU (a host clock
on CPU) after warm-up, median of repeats.

Lean execution, applied identically to every variant (``make_lean``):
  * prefill: RMSNorm, rotary embedding and SiLU*up compiled (fused elementwise),
    the MLP run in chunks of tokens (bounds the 128K activation memory), and
    the LM head applied to the last token only (``logits_to_keep=1``);
  * decode: a static KV cache and the whole step (model forward + greedy
    argmax + position update) captured once in a CUDA graph and replayed.

Baselines: ``full`` = PyTorch SDPA (FlashAttention kernel) through the same
model; ``full_graph`` = full attention decoded by the same split-KV kernel as
the sparse variants (its prefill is the same SDPA call as ``full``); ``no_attention`` = the attention call returns its query (the rest of
the layer still runs and the cache is still written): the time every sparse
pattern approaches when attention costs nothing.
"""
from __future__ import annotations

import math
import sys
import time
import types

import torch
import torch.nn.functional as F

from lib import hf_attention

#: Qwen2-7B's shape (config.json of Qwen/Qwen2-7B).
QWEN2_7B = dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                num_attention_heads=28, num_key_value_heads=4, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                max_position_embeddings=131072, tie_word_embeddings=False)
#: A tiny model of the same family for CPU / CI runs.
TINY = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, rope_theta=1_000_000.0, rms_norm_eps=1e-6, max_position_embeddings=131072,
            tie_word_embeddings=False)
SHAPES = {"qwen2-7b": QWEN2_7B, "tiny": TINY}

NO_ATTENTION = "no_attention"

#: name -> how the model is switched. ``backend`` is lib.hf_attention's.
VARIANTS = {
    "full": dict(label="Full attention (SDPA)", attn="sdpa"),
    # Same full attention, decoded by the split-KV kernel that the sparse variants use (a strong decode
    # baseline: transformers' SDPA decode over a static cache runs a masked kernel with little parallelism).
    "full_graph": dict(label="Full attention (split-KV decode)", attn="block_sparse", pattern="full", backend="auto"),
    "sliding_window": dict(label="Sliding window (ours)", attn="block_sparse", pattern="sliding_window", backend="auto"),
    "power": dict(label="PowerAttention (ours)", attn="block_sparse", pattern="power", backend="auto"),
    "power_flex": dict(label="PowerAttention (FlexAttention)", attn="block_sparse", pattern="power", backend="flex"),
    NO_ATTENTION: dict(label="Attention skipped (bound)", attn=NO_ATTENTION),
}


# ----------------------------------------------------------------------------- model
def build_model(shape="tiny", device="cpu", dtype=torch.bfloat16, seed=0, **overrides):
    """A randomly initialised Qwen2ForCausalLM of the named shape, created directly on ``device``."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {list(SHAPES)}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype, got {dtype!r}")
    config = Qwen2Config(**{**SHAPES[shape], **overrides}, attn_implementation="sdpa")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2ForCausalLM(config)  # weights are drawn on the device: no host-side init
    finally:
        torch.set_default_dtype(previous)
    return model.eval().requires_grad_(False)


def load_pretrained(name, device="cuda", dtype=torch.bfloat16):
    """Real weights by hub name (where the hub is reachable); same benchmark code applies."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(name, dtype=dtype, device_map=device).eval().requires_grad_(False)


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def decode_weight_bytes(model) -> int:
    """Bytes a decode step must read: every weight except the embedding table (one row is read)."""
    emb = model.get_input_embeddings().weight
    return weight_bytes(model) - emb.numel() * emb.element_size()


def kv_bytes(config, context, batch, dtype_bytes=2) -> int:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * context * batch * dtype_bytes


# ----------------------------------------------------------------------------- variants
def _no_attention_forward(module, query, key, value, attention_mask, **kwargs):
    return query.transpose(1, 2).contiguous(), None


def register_no_attention():
    from transformers import AttentionInterface

    AttentionInterface.register(NO_ATTENTION, _no_attention_forward)


def set_variant(model, name, block_size=256, **mask_config):
    """Switch ``model`` (in place) to the variant ``name`` of ``VARIANTS``."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {list(VARIANTS)}")
    v = VARIANTS[name]
    if v["attn"] == "block_sparse":
        return hf_attention.use_sparse_attention(model, v["pattern"], block_size=block_size, backend=v["backend"],
                                                 max_context=1 << 30,
                                                 decode="graph", **mask_config.get(v["pattern"], {}))
    if v["attn"] == NO_ATTENTION:
        register_no_attention()
    model.set_attn_implementation(v["attn"])
    return model


# ----------------------------------------------------------------------------- lean non-attention part
def _rms_norm(x, weight, eps):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _silu_mul(gate, up):
    return F.silu(gate) * up


def make_lean(model, mlp_chunk=16384, compile=True):
    """Make the non-attention part lean (same math); returns a dict describing what was done.

    Applied once to the model, so every variant shares it.
    """
    comp = (lambda f: torch.compile(f, dynamic=True)) if compile else (lambda f: f)
    rms, silu_mul = comp(_rms_norm), comp(_silu_mul)

    def norm_forward(self, x):
        return rms(x, self.weight, self.variance_epsilon)

    def mlp_forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= mlp_chunk:
            return self.down_proj(silu_mul(self.gate_proj(x), self.up_proj(x)))
        out = torch.empty_like(flat)
        for i in range(0, flat.shape[0], mlp_chunk):
            c = flat[i:i + mlp_chunk]
            out[i:i + mlp_chunk] = self.down_proj(silu_mul(self.gate_proj(c), self.up_proj(c)))
        return out.view_as(x)

    n_norm = n_mlp = 0
    for module in model.modules():
        cls = type(module).__name__
        if cls.endswith("RMSNorm"):
            module.forward = types.MethodType(norm_forward, module)
            n_norm += 1
        elif cls.endswith("MLP") and hasattr(module, "gate_proj"):
            module.forward = types.MethodType(mlp_forward, module)
            n_mlp += 1
    rope = False
    modeling = sys.modules.get(type(model).__module__)
    if compile and modeling is not None and hasattr(modeling, "apply_rotary_pos_emb"):
        orig = getattr(modeling.apply_rotary_pos_emb, "_lean_original", modeling.apply_rotary_pos_emb)
        fused = comp(orig)
        fused._lean_original = orig
        modeling.apply_rotary_pos_emb = fused  # the attention modules look it up in their module's globals
        rope = True
    return dict(compiled=bool(compile), rms_norms=n_norm, mlps=n_mlp, mlp_chunk=mlp_chunk, rope_compiled=rope,
                lm_head="last token only (logits_to_keep=1)")


# ----------------------------------------------------------------------------- timing
class _Timer:
    def __init__(self, device):
        self.cuda = torch.device(device).type == "cuda"

    def __enter__(self):
        if self.cuda:
            self.start, self.end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            self.start.record()
        else:
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.end.record()
            torch.cuda.synchronize()
            self.seconds = self.start.elapsed_time(self.end) / 1e3
        else:
            self.seconds = time.perf_counter() - self.t0


def _device(model):
    return next(model.parameters()).device


def _reset_peak(device):
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device):
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


@torch.no_grad()
def time_prefill(model, context, batch=1, repeats=1, warmup=1, seed=0):
    """Prefill ``context`` random tokens (KV cache written, logits of the last token). Seconds per run."""
    device = _device(model)
    g = torch.Generator(device="cpu").manual_seed(seed)
    ids = torch.randint(0, model.config.vocab_size, (batch, context), generator=g).to(device)
    for _ in range(warmup):
        model(ids, use_cache=True, logits_to_keep=1)
    _reset_peak(device)
    times = []
    for _ in range(repeats):
        with _Timer(device) as t:
            out = model(ids, use_cache=True, logits_to_keep=1)
        times.append(t.seconds)
        del out
    return dict(seconds=float(sorted(times)[len(times) // 2]), runs=[float(x) for x in times],
                peak_gib=_peak_gib(device))


@torch.no_grad()
def time_decode(model, context, batch=1, steps=1024, warmup=3, graphs=None, seed=0):
    """Greedy decoding of ``steps`` tokens after a ``context``-token cache. Milliseconds per step.

    The static cache is filled with random keys/values instead of a real
    prefill: the step's work does not depend on the values, and this keeps the
    cost of a 128K batch-8 prefill out of the decode benchmark.
    """
    from transformers import StaticCache

    device = _device(model)
    graphs = device.type == "cuda" if graphs is None else graphs
    cfg = model.config
    cache = StaticCache(config=cfg, max_cache_len=context + steps + warmup + 1)
    g = torch.Generator(device="cpu").manual_seed(seed)
    tok = torch.randint(0, cfg.vocab_size, (batch, 1), generator=g).to(device)
    pos = torch.zeros(batch, 1, dtype=torch.long, device=device)
    model(tok, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1)  # allocates the cache
    gen = torch.Generator(device=device).manual_seed(seed)
    for layer in cache.layers:
        for buf in (layer.keys, layer.values):
            buf.normal_(generator=gen)

    def reset():
        for layer in cache.layers:
            layer.cumulative_length.fill_(context)
        pos.fill_(context)

    def step():
        logits = model(tok, position_ids=pos, past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
        pos.add_(1)

    reset()
    _reset_peak(device)
    if graphs:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        reset()
        run = graph.replay
    else:
        for _ in range(warmup):
            step()
        reset()
        run = step
    with _Timer(device) as t:
        for _ in range(steps):
            run()
    final_pos = int(pos[0, 0])
    if final_pos != context + steps:  # the graph really advanced the cache
        raise RuntimeError(f"decode loop ended at position {final_pos}, expected {context + steps}")
    peak = _peak_gib(device)
    del cache
    return dict(ms_per_step=1e3 * t.seconds / steps, seconds=t.seconds, steps=steps, cuda_graphs=graphs,
                peak_gib=peak)


def decode_fits(model, context, batch, steps, margin_gib=4.0):
    """Whether weights + a static cache of this size fit the device (None on CPU)."""
    device = _device(model)
    if device.type != "cuda":
        return True
    need = weight_bytes(model) + kv_bytes(model.config, context + steps + 8, batch) + margin_gib * 2**30
    return need <= torch.cuda.get_device_properties(device).total_memory


# ----------------------------------------------------------------------------- the whole benchmark
def run_benchmark(model, contexts, variants=("full", "sliding_window", "power", "power_flex", NO_ATTENTION),
                  decode_variants=("full", "sliding_window", "power", NO_ATTENTION), decode_batches=(1,),
                  decode_steps=(1024,), prefill_repeats=1, block_size=256, mask_config=None, progress=True,
                  decode_max_tokens=None, checkpoint=None):
    """Prefill and decode records for every (variant, context[, batch]); failures are recorded, not raised.

    ``decode_steps``: one number per entry of ``decode_batches``.
    ``decode_max_tokens``: skip decode runs with batch x context above this (memory).
    ``checkpoint``: a JSON path rewritten after every record, so a run cut short keeps what it measured.
    Returns a list of dicts with keys phase, variant, context, batch, and the
    timing fields (or ``error``).
    """
    from tqdm.auto import tqdm

    mask_config = mask_config or {}
    if len(decode_steps) != len(decode_batches):
        raise ValueError("decode_steps needs one entry per decode batch size")
    jobs = [("prefill", v, c, 1, None) for c in contexts for v in variants]
    jobs += [("decode", v, c, b, s) for b, s in zip(decode_batches, decode_steps) for c in contexts
             for v in decode_variants]
    records, warmed = [], set()
    for phase, variant, context, batch, steps in tqdm(jobs, disable=not progress, desc="latency"):
        rec = dict(phase=phase, variant=variant, context=context, batch=batch)
        try:
            set_variant(model, variant, block_size=block_size, **mask_config)
            if phase == "prefill":
                # Warm up where something may compile: a variant's first run (its kernels), the first
                # run at a new length (the lean parts recompile for new shapes: seen once at 32K, where
                # an unwarmed run absorbed ~0.7 s), and flex at every length (specialised to it).
                cold = variant not in warmed or context not in warmed or variant == "power_flex"
                rec.update(time_prefill(model, context, repeats=prefill_repeats, warmup=int(cold)))
                warmed.update((variant, context))
            elif decode_max_tokens is not None and batch * context > decode_max_tokens:
                rec.update(error=f"skipped: batch x context above decode_max_tokens={decode_max_tokens}")
            elif not decode_fits(model, context, batch, steps):
                rec.update(error="skipped: weights + KV cache exceed GPU memory")
            else:
                rec.update(time_decode(model, context, batch=batch, steps=steps))
        except Exception as e:  # one failing variant must not lose the rest of the run
            rec.update(error=f"{type(e).__name__}: {str(e)[:300]}")
            if _device(model).type == "cuda":
                torch.cuda.empty_cache()
        records.append(rec)
        if checkpoint is not None:
            import json
            from pathlib import Path

            Path(checkpoint).write_text(json.dumps(records, indent=1, default=str))
        if progress:
            msg = rec.get("error") or (f"{rec['seconds']:.3f} s" if phase == "prefill" else f"{rec['ms_per_step']:.2f} ms/step")
            tqdm.write(f"{phase:7s} {variant:15s} ctx={context:>6d} b={batch}: {msg}")
    return records


# ----------------------------------------------------------------------------- physics
def decode_floor_ms(model, context, batch, pattern_tokens=None, bandwidth_gbs=3350.0):
    """Bytes-over-bandwidth floor of one decode step: weights + the KV the attention must read.

    ``pattern_tokens``: keys each query reads (None = the whole context).
    """
    tokens = context if pattern_tokens is None else min(pattern_tokens, context)
    return 1e3 * (decode_weight_bytes(model) + kv_bytes(model.config, tokens, batch)) / (bandwidth_gbs * 1e9)


def attended_tokens(pattern, context, block_size=256, **cfg):
    """Keys the last query of a ``context``-long sequence reads under ``pattern``."""
    from lib import masks

    nb = math.ceil(context / block_size)
    return int(masks.blocks_per_row(pattern, nb, **cfg)[-1]) * block_size if pattern != "full" else context


def prefill_linear_flops(config, context, batch=1):
    """Matrix FLOPs of the projections and MLP (lm_head on one token): 2 * params * tokens."""
    h, i, l = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    kv = config.num_key_value_heads * (h // config.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i
    return 2 * per_layer * l * context * batch


def prefill_attention_flops(config, context, keys_per_query=None, batch=1):
    """QK^T and PV FLOPs; full causal attention reads context/2 keys per query on average."""
    h, d = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    keys = context / 2 if keys_per_query is None else keys_per_query
    return 4 * h * d * context * keys * config.num_hidden_layers * batch


__all__ = [
    "QWEN2_7B", "TINY", "SHAPES", "VARIANTS", "NO_ATTENTION", "build_model", "load_pretrained", "set_variant",
    "make_lean", "time_prefill", "time_decode", "decode_fits", "run_benchmark", "weight_bytes",
    "decode_weight_bytes", "kv_bytes", "decode_floor_ms", "attended_tokens", "prefill_linear_flops",
    "prefill_attention_flops",
]

"""End-to-end prefill / decode latency of a transformers decoder under each attention variant (Figure 4a).

One model object, one set of weights; only ``config._attn_implementation``
(and the block-sparse settings) change between variants, so every variant runs
the same non-attention code. Timing uses CUDA events on the GPU (a host clock
on CPU) after warm-up, median of repeats.

Lean execution, applied identically to every variant (``make_lean``):
  * prefill: RMSNorm, rotary embedding and SiLU*up compiled (fused elementwise),
    the MLP run in chunks of tokens (bounds the 128K activation memory), and
    the LM head applied to the last token only (``logits_to_keep=1``);
  * q/k/v projections fused into one linear per layer (weights and biases
    concatenated) and the MLP's gate/up projections into one: a decode step runs
    each as one GEMM (fewer, longer GEMVs), a prefill one GEMM per part on row
    slices of the fused weight (as fast, and its outputs stay contiguous);
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
from torch import nn

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


def set_variant(model, name, block_size=256, graph_kernel=True, **mask_config):
    """Switch ``model`` (in place) to the variant ``name`` of ``VARIANTS``.

    ``graph_kernel``: the block-sparse variants decode with the split-KV Triton kernel (True) or by
    gathering the selected blocks for SDPA (False: the fallback when ``check_decode_kernel`` fails);
    passed to ``lib.hf_attention.use_sparse_attention``. It only matters on CUDA.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; expected one of {list(VARIANTS)}")
    v = VARIANTS[name]
    if v["attn"] == "block_sparse":
        return hf_attention.use_sparse_attention(model, v["pattern"], block_size=block_size, backend=v["backend"],
                                                 max_context=1 << 30, decode="graph", graph_kernel=graph_kernel,
                                                 **mask_config.get(v["pattern"], {}))
    if v["attn"] == NO_ATTENTION:
        register_no_attention()
    model.set_attn_implementation(v["attn"])
    return model


def flex_options(name: str | None):
    """Set and return the FlexAttention ``kernel_options`` of the ``power_flex`` variant: ``name`` is a key of
    ``kernels.benchmark.FLEX_CONFIGS`` (None or "default": Flex's own choice)."""
    from kernels.benchmark import FLEX_CONFIGS

    if name is not None and name not in FLEX_CONFIGS:
        raise ValueError(f"unknown FlexAttention configuration {name!r}; expected one of {list(FLEX_CONFIGS)}")
    options = FLEX_CONFIGS[name] if name is not None else None
    hf_attention.set_flex_kernel_options(options)
    return options


# ----------------------------------------------------------------------------- lean non-attention part
def _rms_norm(x, weight, eps):
    dtype = x.dtype
    x = x.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(dtype)


def _silu_mul(gate, up):
    return F.silu(gate) * up


#: ``dynamic`` of make_lean's torch.compile calls. None (automatic dynamic): a function is first compiled for
#: the shapes it sees and recompiled once with only the dims that changed (tokens, batch) symbolic, so the head
#: and hidden sizes stay constants in the index arithmetic. With True (every dim symbolic) the rotary kernel took
#: 20 ms instead of 4.4 ms per 32K-token prefill of Qwen2-7B on an H100, and the attention-skipped prefill at
#: 128K about 2.85 s instead of 2.80 s (three runs each; the same code for every variant).
COMPILE_DYNAMIC = None

#: Products over at most this many tokens (decode steps) use a fused weight (``make_lean``) in one GEMM; longer
#: ones (prefill) run one GEMM per part on row slices of the same weight (views: no copy), whose outputs are
#: contiguous. Measured on an H100, Qwen2-7B bf16: at 16K-token chunks cuBLAS runs the fused and the separate
#: products in the same time (gate/up 357 vs 356 ms, q/k/v 44.7 vs 44.9 ms per 32K-token prefill), while the
#: elementwise kernels that read split views of a fused output (SiLU*up, rotary) got slower, so one fused GEMM
#: made the 128K prefill 70-100 ms slower. A decode step, fewer and longer GEMVs, got 9% faster (attention
#: skipped, 32K cache: 6.66 -> 6.04 ms at batch 1, 6.76 -> 6.15 ms at batch 8; full attention by the split-KV
#: kernel: 7.60 -> 6.98 ms and 12.56 -> 11.93 ms), and the prefill with this split is as fast as unfused.
FUSED_GEMM_MAX_TOKENS = 256

#: Attention classes whose forward ``_fused_attention_forward`` reproduces (transformers 5.x Qwen2Attention.forward,
#: the same in 5.17 and 5.23): only these get their q/k/v projections fused.
FUSED_ATTENTION_CLASSES = ("Qwen2Attention",)


def _fuse_linears(module, names, fused_name):
    """Replace the ``nn.Linear`` children ``names`` of ``module`` (same input) by one, ``fused_name``.

    The fused weight is the originals' rows concatenated (bias likewise; a missing bias is zeros when another has
    one), so ``fused(x).split(module.<fused_name>_sizes, -1)`` are the originals' outputs. The originals are
    deleted from ``module`` before returning, so their storage is freed once nothing else refers to it: the
    extra memory is one fused weight at a time (it exists next to the originals while being built).
    """
    linears = [getattr(module, n) for n in names]
    first = linears[0].weight
    if any(type(l) is not nn.Linear for l in linears) or len({l.in_features for l in linears}) != 1:
        raise TypeError(f"{type(module).__name__}: {names} are not nn.Linear layers of one input size")
    weight = torch.cat([l.weight for l in linears], dim=0)
    bias = None
    if any(l.bias is not None for l in linears):
        bias = torch.cat([l.bias if l.bias is not None else first.new_zeros(l.out_features) for l in linears])
    fused = nn.Linear(first.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=first.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=first.requires_grad)
    if bias is not None:
        fused.bias = nn.Parameter(bias, requires_grad=first.requires_grad)
    fused.train(linears[0].training)
    sizes = tuple(l.out_features for l in linears)
    del linears, first, weight, bias
    for n in names:
        delattr(module, n)
    setattr(module, fused_name, fused)
    setattr(module, f"{fused_name}_sizes", sizes)


def _fused_outputs(linear, sizes, x):
    """The outputs of the projections fused into ``linear`` (their ``sizes``): see ``FUSED_GEMM_MAX_TOKENS``."""
    if x.numel() <= FUSED_GEMM_MAX_TOKENS * x.shape[-1]:
        return linear(x).split(sizes, dim=-1)
    biases = linear.bias.split(sizes) if linear.bias is not None else (None,) * len(sizes)
    return tuple(F.linear(x, w, b) for w, b in zip(linear.weight.split(sizes), biases))


def _fused_attention_forward(self, hidden_states, position_embeddings, attention_mask, past_key_values=None,
                             **kwargs):
    """transformers' Qwen2Attention.forward with q/k/v from the fused ``qkv_proj``, the rest unchanged.

    Same steps in the same order: projections, rotary embedding (looked up in the modeling module at call time,
    so ``make_lean``'s compiled one is used), cache update (a DynamicCache in prefill, the static cache of the
    graphed decode step), then the attention function of ``config._attn_implementation`` (read per call, so
    ``set_variant`` switches it), then ``o_proj``.
    """
    modeling = sys.modules[type(self).__module__]
    input_shape = hidden_states.shape[:-1]
    hidden_shape = (*input_shape, -1, self.head_dim)
    query, key, value = _fused_outputs(self.qkv_proj, self.qkv_proj_sizes, hidden_states)
    query = query.view(hidden_shape).transpose(1, 2)
    key = key.view(hidden_shape).transpose(1, 2)
    value = value.view(hidden_shape).transpose(1, 2)

    cos, sin = position_embeddings
    query, key = modeling.apply_rotary_pos_emb(query, key, cos, sin)
    if past_key_values is not None:
        key, value = past_key_values.update(key, value, self.layer_idx)

    attention_interface = modeling.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                                         modeling.eager_attention_forward)
    attn_output, attn_weights = attention_interface(
        self, query, key, value, attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=self.scaling,
        sliding_window=self.sliding_window,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def make_lean(model, mlp_chunk=16384, compile=True, fuse=True):
    """Make the non-attention part lean (same math); returns a dict describing what was done.

    Applied once to the model, so every variant shares it: the variants differ only in
    ``config._attn_implementation`` (``set_variant``), which the lean forwards read at every call. Idempotent:
    a second call re-installs the forwards and finds the projections already fused.

    * RMSNorm, rotary embedding and SiLU*up compiled (``compile``, with ``dynamic=COMPILE_DYNAMIC``; fused
      elementwise kernels);
    * the MLP run in chunks of ``mlp_chunk`` tokens (bounds the 128K activation memory);
    * ``fuse``: fewer, larger GEMMs where that pays. Each attention layer's q/k/v projections become one linear
      ``qkv_proj`` (weights and biases concatenated: [q; k; v] rows) and each MLP's gate/up projections one
      linear ``gate_up_proj`` ([gate; up] rows). A decode step (at most ``FUSED_GEMM_MAX_TOKENS`` tokens) runs
      each as one GEMM and splits the output (views): one long GEMV reads the weights at a better rate than
      three short ones (k and v are 512 rows at Qwen2-7B's shape). A prefill runs one GEMM per part on row
      slices of the fused weight, as the unfused model does: at that size the fused GEMM is no faster and its
      split output slows the elementwise kernels that read it (see ``FUSED_GEMM_MAX_TOKENS``). Same products
      either way, so the logits agree with the unfused model to rounding: on an H100 in bf16 a prefill's are
      identical and a decode step's (the fused GEMV sums in another order) differ by bf16 rounding carried
      through the layers (max 0.19 on logits up to 5.9, random Qwen2-7B, same greedy tokens); in float32 on the
      CPU within 1e-6. The attention modules then run ``_fused_attention_forward`` (only for
      ``FUSED_ATTENTION_CLASSES``), which still calls the variant's attention function through transformers'
      attention interface, with or without a cache. Fusing is done layer by layer and frees the originals as it
      goes: the extra memory at any moment is one fused weight (Qwen2-7B bf16: 272 MB for gate/up, 33 MB for
      q/k/v), never a second copy of the model. The parameter count is unchanged.
    """
    comp = (lambda f: torch.compile(f, dynamic=COMPILE_DYNAMIC)) if compile else (lambda f: f)
    rms, silu_mul = comp(_rms_norm), comp(_silu_mul)

    def norm_forward(self, x):
        return rms(x, self.weight, self.variance_epsilon)

    def gate_up(self, x):
        if hasattr(self, "gate_up_proj"):
            return silu_mul(*_fused_outputs(self.gate_up_proj, self.gate_up_proj_sizes, x))
        return silu_mul(self.gate_proj(x), self.up_proj(x))

    def mlp_forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        if flat.shape[0] <= mlp_chunk:
            return self.down_proj(gate_up(self, x))
        out = torch.empty_like(flat)
        for i in range(0, flat.shape[0], mlp_chunk):
            out[i:i + mlp_chunk] = self.down_proj(gate_up(self, flat[i:i + mlp_chunk]))
        return out.view_as(x)

    device = _device(model)
    n_norm = n_mlp = n_qkv = n_gate_up = 0
    # The modules to change, collected first (the loop replaces children); only the parents are held, so each
    # layer's original projections are freed as soon as that layer is fused.
    targets = [m for m in model.modules()
               if type(m).__name__.endswith(("RMSNorm", "MLP")) or type(m).__name__ in FUSED_ATTENTION_CLASSES]
    for module in targets:
        cls = type(module).__name__
        if cls.endswith("RMSNorm"):
            module.forward = types.MethodType(norm_forward, module)
            n_norm += 1
        elif cls.endswith("MLP") and (hasattr(module, "gate_proj") or hasattr(module, "gate_up_proj")):
            if fuse and not hasattr(module, "gate_up_proj"):
                _fuse_linears(module, ("gate_proj", "up_proj"), "gate_up_proj")
                _release_cached(device)
            module.forward = types.MethodType(mlp_forward, module)
            n_mlp += 1
            n_gate_up += hasattr(module, "gate_up_proj")
        elif cls in FUSED_ATTENTION_CLASSES:
            if fuse and not hasattr(module, "qkv_proj"):
                _fuse_linears(module, ("q_proj", "k_proj", "v_proj"), "qkv_proj")
                _release_cached(device)
            if hasattr(module, "qkv_proj"):
                module.forward = types.MethodType(_fused_attention_forward, module)
                n_qkv += 1
    rope = False
    modeling = sys.modules.get(type(model).__module__)
    if compile and modeling is not None and hasattr(modeling, "apply_rotary_pos_emb"):
        orig = getattr(modeling.apply_rotary_pos_emb, "_lean_original", modeling.apply_rotary_pos_emb)
        fused = comp(orig)
        fused._lean_original = orig
        modeling.apply_rotary_pos_emb = fused  # the attention modules look it up in their module's globals
        rope = True
    return dict(compiled=bool(compile), rms_norms=n_norm, mlps=n_mlp, mlp_chunk=mlp_chunk, rope_compiled=rope,
                compile_dynamic=COMPILE_DYNAMIC if compile else None, fused_qkv=n_qkv, fused_gate_up=n_gate_up,
                fused_gemm_max_tokens=FUSED_GEMM_MAX_TOKENS, lm_head="last token only (logits_to_keep=1)")


def _release_cached(device):
    """Return the blocks freed by a fusion to the driver, so the next layer's fused weight need not sit beside them."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


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
                  decode_max_tokens=None, checkpoint=None, graph_kernel=True):
    """Prefill and decode records for every (variant, context[, batch]); failures are recorded, not raised.

    ``decode_steps``: one number per entry of ``decode_batches``.
    ``graph_kernel``: decode kernel of the block-sparse variants (see ``set_variant``).
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
            set_variant(model, variant, block_size=block_size, graph_kernel=graph_kernel, **mask_config)
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


# ----------------------------------------------------------------------------- the paper's claims and our targets
#: Figure 4a / section 4.5 (Qwen2-7B on an A800, 128K context).
PAPER = dict(prefill_speedup_128k=3.0, prefill_speedup_vs_minference_128k=1.3, decode_fraction_128k=0.58,
             decode_fraction_vs_minference_128k=0.80)
PAPER_CONTEXT = 131072
PAPER_SHAPE = "qwen2-7b"
#: Why the MInference baseline has no numbers (stored as ``results["minference"]``).
MINFERENCE = "not measured: PyPI has only a source distribution that compiles CUDA extensions"
#: The split-KV decode kernel is used only if its relative error vs float64 (bf16 inputs) is below this.
DECODE_CHECK_TOL = 2e-2
#: The project's own targets (issue 11's numbers; before it the decode target was 1.1 and the Flex target "faster
#: at every length"): a sparse decode step within 5% of the attention-skipped step, flat in the context (max / min
#: step over lengths) within 5%, and the prefill at least 5% ahead of FlexAttention end to end from 64K on.
TARGET_DECODE_OVER_SKIPPED = 1.05
TARGET_DECODE_FLAT = 1.05
TARGET_PREFILL_VS_FLEX = 1.05
TARGET_PREFILL_VS_FLEX_FROM = 65536


def decode_kernel_ok(decode_check: dict) -> bool:
    """Whether every pattern's kernel check (``hf_attention.check_decode_kernel``) passed.

    ``decode_check``: {pattern: relative error, or the error message of a kernel that failed to run}.
    An empty dict (nothing checked, e.g. no GPU) is not a pass.
    """
    return bool(decode_check) and all(isinstance(x, float) and x < DECODE_CHECK_TOL for x in decode_check.values())


def _ctx(c) -> str:
    return f"{c // 1024}K" if c >= 1024 else str(c)


def _timings(records):
    """{(variant, context): prefill seconds} and {(variant, context, batch): decode ms per step}, errors left out."""
    pre, dec = {}, {}
    for r in records:
        if r.get("error") is not None:
            continue
        if r["phase"] == "prefill":
            pre[(r["variant"], r["context"])] = r["seconds"]
        else:
            dec[(r["variant"], r["context"], r["batch"])] = r["ms_per_step"]
    return pre, dec


def _kv_bytes_bound(results, dec, contexts, batch) -> list:
    """[(context, the least PowerAttention / attention-skipped step ratio)]: the skipped step plus the time to read
    PowerAttention's selected KV blocks at the bandwidth of the ``physics`` floors (any kernel must read them)."""
    out = []
    for c in contexts:
        phys = _physics_at(results, c)
        kv_ms = (phys.get(f"decode_floor_ms_b{batch}_power") or 0) - (phys.get(f"decode_floor_ms_b{batch}_weights") or 0)
        if kv_ms > 0 and ("no_attention", c, batch) in dec:
            out.append((c, 1 + kv_ms / dec[("no_attention", c, batch)]))
    return out


def _physics_at(results, context) -> dict:
    return {int(p["context"]): p for p in results.get("physics", [])}.get(context, {})


def _note(row: dict, note: str) -> dict:
    row["why"] = f"{row['why']}; {note}"
    return row


def _why_not_comparable(results) -> str | None:
    """Why this run cannot judge a latency claim (None: it can): the paper's claims need the GPU and its shape."""
    device, shape = results.get("device"), results.get("shape")
    if device != "cuda":
        return (f"a {device} run of the '{shape}' model: its timings only show that the code path runs "
                "(the committed GPU run judges these claims)")
    if shape != PAPER_SHAPE:
        return f"model shape '{shape}', not Qwen2-7B's"
    return None


def figure4a_claims(results: dict) -> list[dict]:
    """The paper's Figure 4a claims and the project's latency targets (ids ``target_*``), as ``lib.claims`` rows.

    ``results``: the dict notebook 09 stores in ``results.json`` (keys ``records``, ``physics``, ``device``,
    ``shape``, ``minference``, ``decode_kernel_check``), so the committed GPU run's claims are
    ``figure4a_claims(json.load(open("outputs/gpu/09_figure4a_latency/results.json")))``.
    On a CPU / CI run (a tiny model) every claim is inconclusive: its timings cannot judge a GPU claim.
    """
    from lib.claims import check

    pre, dec = _timings(results["records"])
    off = _why_not_comparable(results)
    P = PAPER_CONTEXT
    out = []

    # -- the paper: prefill 3.0x over full attention at 128K
    want = PAPER["prefill_speedup_128k"]
    contexts = sorted({c for _, c in pre})
    top = P if P in contexts else (contexts[-1] if contexts else None)
    full, power, skipped = (pre.get((v, top)) for v in ("full", "power", "no_attention"))
    have = None not in (full, power)
    row = check("F4a.prefill", "PowerAttention prefills 3.0x faster than full attention at 128K (Qwen2-7B)",
                paper=f"{want}x (A800)",
                ours=(f"{full / power:.2f}x at {_ctx(top)}" + (f" (attention skipped: {full / skipped:.2f}x, the most any "
                                                                "sparse attention can give here)" if skipped else ""))
                if have else "not measured",
                holds=full / power >= want if have else None,
                rule=f"full / PowerAttention prefill time at 128K >= {want}, batch 1, same run",
                inconclusive=off or (None if top == P else "no prefill at 128K in this run"
                                     + (f" (longest: {_ctx(top)})" if top else "")))
    if row["verdict"] == "not reproduced" and skipped:
        _note(row, f"the projections and MLP alone (attention skipped) take {skipped:.2f} s of full attention's "
                   f"{full:.2f} s, so {want}x needs PowerAttention's own attention to take <= {full / want - skipped:.2f} s; "
                   f"ours takes {power - skipped:.2f} s")
    out.append(row)

    # -- the paper: decoding takes 58% of full attention's time at 128K (batch 1)
    want = PAPER["decode_fraction_128k"]
    p, fg, fs = (dec.get((v, P, 1)) for v in ("power", "full_graph", "full"))
    floor = _physics_at(results, P).get("power/full_floor_b1")
    parts = []
    if p and fg:
        parts.append(f"{p / fg:.0%} of full attention decoded by the same split-KV kernel")
    if p and fs:
        parts.append(f"{p / fs:.0%} of transformers' SDPA decode")
    if floor is not None:
        parts.append(f"bytes floor {floor:.0%}")
    row = check("F4a.decode", "Decoding 1024 tokens at 128K with PowerAttention takes 58% of full attention's time",
                paper=f"{want:.0%} (A800, batch 1)", ours="; ".join(parts) or "not measured",
                holds=p / fg <= want if (p and fg) else None,
                rule=f"PowerAttention / full-attention decode step at 128K, batch 1, <= {want:.0%}, full attention decoded "
                     "by the split-KV kernel the sparse variants use (the baseline that runs at its bytes)",
                inconclusive=off or (None if (p and fg) else "no batch-1 decode of PowerAttention and the split-KV full "
                                                               "attention at 128K in this run"))
    if row["verdict"] == "not reproduced" and floor is not None and floor > want:
        _note(row, f"a step reads all weights once, so (weights + PowerAttention's KV) / (weights + the whole KV) = "
                   f"{floor:.0%} bounds the ratio from below, a ratio of bytes the same on any GPU: the paper's "
                   f"{want:.0%} needs a full-attention decode slower than its bytes, as transformers' SDPA decode is here")
    out.append(row)

    # -- the paper: MInference (not installable here)
    reason = results.get("minference", MINFERENCE)
    out.append(check("F4a.minference_prefill", "PowerAttention prefills 1.3x faster than MInference at 128K",
                     paper=f"{PAPER['prefill_speedup_vs_minference_128k']}x", ours="MInference not measured", holds=None,
                     rule="MInference / PowerAttention prefill time at 128K >= 1.3", inconclusive=reason))
    out.append(check("F4a.minference_decode", "PowerAttention decodes in 80% of MInference's time at 128K",
                     paper=f"{PAPER['decode_fraction_vs_minference_128k']:.0%}", ours="MInference not measured",
                     holds=None, rule="PowerAttention / MInference decode time at 128K <= 80%", inconclusive=reason))

    # -- our targets
    flex = [(c, pre[("power", c)], pre[("power_flex", c)]) for c in contexts
            if ("power", c) in pre and ("power_flex", c) in pre]
    judged = [(c, o, f) for c, o, f in flex if c >= TARGET_PREFILL_VS_FLEX_FROM]
    opts = results.get("flex_kernel_options")
    how = (f"FlexAttention with kernel_options {opts}" if opts else "FlexAttention in its default configuration")
    out.append(check("target_prefill_vs_flex", f"Our Triton kernels prefill PowerAttention at least "
                     f"{TARGET_PREFILL_VS_FLEX - 1:.0%} faster than FlexAttention end to end, from "
                     f"{_ctx(TARGET_PREFILL_VS_FLEX_FROM)} on", paper="(project target)",
                     ours=", ".join(f"{_ctx(c)} {f / o:.2f}x" for c, o, f in flex) + f" ({how}: its time / ours)"
                     if flex else "not measured",
                     holds=all(f / o >= TARGET_PREFILL_VS_FLEX for _, o, f in judged) if judged else None,
                     rule=f"FlexAttention / our PowerAttention prefill time >= {TARGET_PREFILL_VS_FLEX} at every length "
                          f">= {_ctx(TARGET_PREFILL_VS_FLEX_FROM)}, same lean model, same run",
                     inconclusive=off or (None if judged else f"no length >= {_ctx(TARGET_PREFILL_VS_FLEX_FROM)}")))
    batches = sorted({b for (v, _, b) in dec if v == "power"})
    for b in batches:
        cs = sorted(c for (v, c, bb) in dec if v == "power" and bb == b)
        ratios = [(c, dec[("power", c, b)] / dec[("no_attention", c, b)]) for c in cs if ("no_attention", c, b) in dec]
        bound = _kv_bytes_bound(results, dec, cs, b)
        out.append(check(f"target_decode_floor_b{b}", f"Batch {b}: a PowerAttention decode step costs at most "
                         f"{TARGET_DECODE_OVER_SKIPPED - 1:.0%} more "
                         "than a step with attention skipped, at every length", paper="(project target)",
                         ours=(", ".join(f"{_ctx(c)} {r:.3f}" for c, r in ratios) + (
                             "; reading PowerAttention's KV blocks alone at the bandwidth of the floors (3.35 TB/s) "
                             "adds " + ", ".join(f"{_ctx(c)} {x - 1:.1%}" for c, x in bound) if bound else ""))
                         if ratios else "not measured",
                         holds=max(r for _, r in ratios) <= TARGET_DECODE_OVER_SKIPPED if ratios else None,
                         rule=f"PowerAttention step / attention-skipped step <= {TARGET_DECODE_OVER_SKIPPED} at every "
                              "length", inconclusive=off))
        steps = [dec[("power", c, b)] for c in cs]
        flat = max(steps) / min(steps)
        out.append(check(f"target_decode_flat_b{b}", f"Batch {b}: PowerAttention's decode step does not grow with "
                         "the context", paper="(project target; the paper: comparable to sliding window)",
                         ours=f"max / min step over {_ctx(cs[0])}-{_ctx(cs[-1])} = {flat:.3f}",
                         holds=flat <= TARGET_DECODE_FLAT, rule=f"max / min step over the lengths <= {TARGET_DECODE_FLAT}",
                         inconclusive=off or (None if len(cs) > 1 else "a single context length")))
    chk = results.get("decode_kernel_check") or {}
    out.append(check("check_decode_kernel", "The split-KV decode kernel timed here agrees with a float64 reference",
                     paper="(our code)", ours=", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k}: {v}"
                                                        for k, v in chk.items()) or "not run",
                     holds=decode_kernel_ok(chk), kind="sanity",
                     rule=f"relative error < {DECODE_CHECK_TOL} for every pattern checked (bf16 inputs), else the "
                          "sparse variants fall back to gather + SDPA",
                     inconclusive=None if results.get("device") == "cuda" else "no CUDA device: the kernel check runs "
                                                                               "on the GPU only"))
    return out


def figure4a_notes(results: dict) -> list[str]:
    """summary.md lines of notebook 09: where the numbers come from and why they differ from the paper's."""
    pre, dec = _timings(results["records"])
    contexts = sorted({c for _, c in pre})
    head = [f"Source: this run (device {results.get('device')}, model shape {results.get('shape')}); decode kernel: "
            f"{results.get('decode_impl')}. MInference: {results.get('minference', MINFERENCE)}.\n"]
    if _why_not_comparable(results):
        head.append("The claims are inconclusive here by rule: " + _why_not_comparable(results) + ". The numbers that "
                    "replicate Figure 4a are in outputs/gpu/09_figure4a_latency/summary.md.\n")
    notes = []  # bullets: why our numbers differ from the paper's
    if contexts:
        top = contexts[-1]
        full, skipped = pre.get(("full", top)), pre.get(("no_attention", top))
        if full and skipped:
            notes.append(f"- Prefill at {_ctx(top)}: the projections and MLP alone (attention skipped) take {skipped:.2f} s "
                         f"of full attention's {full:.2f} s, so no sparse attention can exceed {full / skipped:.2f}x here.")
        phys = _physics_at(results, top)
        floors = [(k.rsplit("_b", 1)[1], v) for k, v in phys.items() if k.startswith("power/full_floor_b")]
        if floors:
            notes.append(f"- Decode: a step reads all weights once; the bytes floor of PowerAttention / full attention at "
                         f"{_ctx(top)} is " + ", ".join(f"{v:.0%} at batch {b}" for b, v in floors)
                         + " (a ratio of bytes, the same on any GPU).")
    for b in sorted({b for (v, _, b) in dec if v == "power"}):
        cs = sorted(c for (v, c, bb) in dec if v == "power" and bb == b)
        for base in ("full_graph", "full"):
            fr = [(c, dec[("power", c, b)] / dec[(base, c, b)]) for c in cs if (base, c, b) in dec]
            if fr:
                notes.append(f"- Decode, batch {b}: PowerAttention / {VARIANTS[base]['label']}: "
                             + ", ".join(f"{_ctx(c)} {r:.0%}" for c, r in fr) + ".")
    return head + ["\n".join(notes)] if notes else head


__all__ = [
    "QWEN2_7B", "TINY", "SHAPES", "VARIANTS", "NO_ATTENTION", "build_model", "load_pretrained", "set_variant",
    "flex_options",
    "make_lean", "COMPILE_DYNAMIC", "FUSED_GEMM_MAX_TOKENS", "FUSED_ATTENTION_CLASSES", "time_prefill",
    "time_decode", "decode_fits", "run_benchmark", "weight_bytes", "decode_weight_bytes", "kv_bytes",
    "decode_floor_ms", "attended_tokens", "prefill_linear_flops", "prefill_attention_flops", "PAPER",
    "PAPER_CONTEXT", "PAPER_SHAPE", "MINFERENCE", "DECODE_CHECK_TOL", "TARGET_DECODE_OVER_SKIPPED",
    "TARGET_DECODE_FLAT", "TARGET_PREFILL_VS_FLEX", "TARGET_PREFILL_VS_FLEX_FROM", "decode_kernel_ok", "figure4a_claims", "figure4a_notes",
]

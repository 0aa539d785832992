"""lib.latency's lean execution (``make_lean``): the fused q/k/v and gate/up projections keep the model's math.

A tiny Qwen2 of the benchmark's family, in float32 on the CPU: the lean model's logits must equal the plain
model's, in prefill and in decode steps over a cache (the dynamic cache of a prefill and the static cache that
``time_decode`` graphs), under every attention variant the benchmark switches between, with the MLP chunked.
"""
from __future__ import annotations

import pytest
import torch

from lib import latency

MASKS = {"power": {"window": 2, "sink": 1}, "sliding_window": {"window": 3, "sink": 1}}
BLOCK = 16
#: float32 on the CPU: the fused GEMM may be blocked differently from three separate ones.
TOL = dict(rtol=1e-5, atol=1e-5)


def tiny(seed=0, **overrides):
    """The benchmark's tiny model in float32, with non-zero q/k/v biases (transformers initialises them to 0)."""
    model = latency.build_model("tiny", "cpu", torch.float32, seed=seed, **overrides)
    g = torch.Generator().manual_seed(seed + 1)
    for layer in model.model.layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.bias.copy_(0.1 * torch.randn(proj.bias.shape, generator=g))
    return model


def lean(seed=0, **kw):
    model = tiny(seed)
    info = latency.make_lean(model, **{"mlp_chunk": 48, "compile": False, **kw})
    return model, info


def ids(batch=2, length=100, seed=0):
    return torch.randint(0, latency.TINY["vocab_size"], (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def prefill_and_decode(model, tokens, steps=4, static=False):
    """Logits of a prefill of ``tokens`` and of ``steps`` greedy decode steps over its cache."""
    from transformers import StaticCache

    batch, length = tokens.shape
    kw = {}
    if static:
        kw["past_key_values"] = StaticCache(config=model.config, max_cache_len=length + steps + 1)
    pos = torch.arange(length).expand(batch, -1)
    out = model(tokens, position_ids=pos, use_cache=True, **kw)
    cache, logits = out.past_key_values, [out.logits]
    tok = out.logits[:, -1:].argmax(-1)
    for i in range(steps):
        pos = torch.full((batch, 1), length + i)
        out = model(tok, position_ids=pos, past_key_values=cache, use_cache=True)
        logits.append(out.logits)
        tok = out.logits[:, -1:].argmax(-1)
    return logits


# ----------------------------------------------------------------------------- structure
def test_fused_layers_replace_the_projections():
    plain = tiny()
    n_params, n_bytes = sum(p.numel() for p in plain.parameters()), latency.weight_bytes(plain)
    attn0, mlp0 = plain.model.layers[0].self_attn, plain.model.layers[0].mlp
    want_qkv = torch.cat([attn0.q_proj.weight, attn0.k_proj.weight, attn0.v_proj.weight]).clone()
    want_bias = torch.cat([attn0.q_proj.bias, attn0.k_proj.bias, attn0.v_proj.bias]).clone()
    mlp_up = mlp0.up_proj.weight.clone()
    want_gate_up = torch.cat([mlp0.gate_proj.weight, mlp0.up_proj.weight]).clone()

    info = latency.make_lean(plain, mlp_chunk=48, compile=False)
    layers = plain.model.layers
    assert info["fused_qkv"] == info["fused_gate_up"] == info["mlps"] == len(layers)
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        for gone in ("q_proj", "k_proj", "v_proj"):
            assert not hasattr(attn, gone)
        for gone in ("gate_proj", "up_proj"):
            assert not hasattr(mlp, gone)
        c = plain.config
        d = c.hidden_size // c.num_attention_heads
        assert attn.qkv_proj_sizes == (c.num_attention_heads * d, c.num_key_value_heads * d, c.num_key_value_heads * d)
        assert attn.qkv_proj.weight.shape == (sum(attn.qkv_proj_sizes), c.hidden_size)
        assert attn.qkv_proj.bias is not None and attn.o_proj.bias is None
        assert mlp.gate_up_proj_sizes == (c.intermediate_size, c.intermediate_size)
        assert mlp.gate_up_proj.bias is None
        assert not any(p.requires_grad for p in layer.parameters())
    torch.testing.assert_close(layers[0].self_attn.qkv_proj.weight, want_qkv, rtol=0, atol=0)
    torch.testing.assert_close(layers[0].self_attn.qkv_proj.bias, want_bias, rtol=0, atol=0)
    torch.testing.assert_close(layers[0].mlp.gate_up_proj.weight, want_gate_up, rtol=0, atol=0)
    torch.testing.assert_close(layers[0].mlp.gate_up_proj.weight[mlp_up.shape[0]:], mlp_up, rtol=0, atol=0)
    # same parameters, nothing kept twice
    assert sum(p.numel() for p in plain.parameters()) == n_params
    assert latency.weight_bytes(plain) == n_bytes
    assert not any(n.endswith(("q_proj.weight", "gate_proj.weight")) for n, _ in plain.named_parameters())


def test_make_lean_twice_is_safe():
    model, first = lean()
    weights = {n: p for n, p in model.named_parameters()}
    tokens = ids(length=70)
    before = prefill_and_decode(model, tokens, steps=2)
    second = latency.make_lean(model, mlp_chunk=48, compile=False)
    assert second == first
    after = {n: p for n, p in model.named_parameters()}
    assert after.keys() == weights.keys() and all(after[n] is weights[n] for n in weights)  # not fused again
    for a, b in zip(before, prefill_and_decode(model, tokens, steps=2)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_fuse_false_keeps_the_projections():
    model = tiny()
    info = latency.make_lean(model, mlp_chunk=48, compile=False, fuse=False)
    assert info["fused_qkv"] == info["fused_gate_up"] == 0
    assert hasattr(model.model.layers[0].self_attn, "q_proj") and hasattr(model.model.layers[0].mlp, "gate_proj")
    for a, b in zip(prefill_and_decode(tiny(), ids()), prefill_and_decode(model, ids())):
        torch.testing.assert_close(a, b, **TOL)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("variant", ["full", "full_graph", "sliding_window", "power", latency.NO_ATTENTION])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic_cache", "static_cache"])
@pytest.mark.parametrize("max_tokens", [0, 16, 1 << 30], ids=["per_part", "fused_decode", "fused_always"])
def test_fused_logits_equal_the_plain_model(variant, static, max_tokens, monkeypatch):
    """Prefill (100 tokens: the MLP runs in chunks of 48) and 4 decode steps, variant switched after make_lean.

    ``max_tokens`` (FUSED_GEMM_MAX_TOKENS): one GEMM per part everywhere, the fused GEMM in decode only (the
    default's split: prefill per part), or the fused GEMM everywhere.
    """
    monkeypatch.setattr(latency, "FUSED_GEMM_MAX_TOKENS", max_tokens)
    plain, (fused, _) = tiny(), lean()
    for m in (plain, fused):
        latency.set_variant(m, variant, block_size=BLOCK, **MASKS)
    tokens = ids(length=100)
    want, got = prefill_and_decode(plain, tokens, static=static), prefill_and_decode(fused, tokens, static=static)
    assert len(got) == 5
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, **TOL)


def test_fusion_survives_switching_variants():
    """One lean model switched through the variants and back gives what it gave the first time."""
    model, _ = lean()
    tokens = ids(length=64)
    first = {}
    for name in ("full", "power", latency.NO_ATTENTION, "sliding_window", "full"):
        latency.set_variant(model, name, block_size=BLOCK, **MASKS)
        assert hasattr(model.model.layers[0].self_attn, "qkv_proj")
        got = prefill_and_decode(model, tokens, steps=2)
        if name in first:
            for a, b in zip(first[name], got):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
        first[name] = got
    # the variants really differ (the attention function is the variant's, not a fixed one)
    assert not torch.allclose(first["full"][0], first[latency.NO_ATTENTION][0])
    assert not torch.allclose(first["full"][0][:, -1], first["power"][0][:, -1])


def test_fused_model_runs_the_timing_functions():
    model, _ = lean()
    latency.set_variant(model, "power", block_size=BLOCK, **MASKS)
    p = latency.time_prefill(model, 96)
    d = latency.time_decode(model, 64, batch=2, steps=3, warmup=1)
    assert p["seconds"] > 0 and d["steps"] == 3 and d["ms_per_step"] > 0


@pytest.mark.parametrize("max_tokens", [0, 1 << 30], ids=["per_part", "fused_always"])
def test_fused_logits_with_compiled_parts(max_tokens, monkeypatch):
    """compile=True (the GPU profile): compiled RMSNorm / rotary / SiLU*up (on split views of the fused output
    when the GEMM is fused), chunked MLP."""
    import sys

    monkeypatch.setattr(latency, "FUSED_GEMM_MAX_TOKENS", max_tokens)
    plain = tiny()
    modeling = sys.modules[type(plain).__module__]
    monkeypatch.setattr(modeling, "apply_rotary_pos_emb", modeling.apply_rotary_pos_emb)  # restored afterwards
    want = prefill_and_decode(plain, ids(), steps=2, static=True)
    fused, info = lean(compile=True)
    assert info["compiled"] and info["rope_compiled"] and info["fused_qkv"] == 2
    for a, b in zip(want, prefill_and_decode(fused, ids(), steps=2, static=True)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)  # compiled elementwise code rounds differently


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fusion_memory_is_one_fused_weight_at_a_time():
    """Fusing frees the originals layer by layer: the peak above the weights is the largest fused weight."""
    model = latency.build_model("tiny", "cuda", torch.bfloat16, hidden_size=1024, intermediate_size=4096,
                                num_attention_heads=8, num_key_value_heads=2, num_hidden_layers=4)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    latency.make_lean(model, compile=False)
    peak = torch.cuda.max_memory_allocated() - before
    gate_up = model.model.layers[0].mlp.gate_up_proj.weight
    largest = gate_up.numel() * gate_up.element_size()
    after = torch.cuda.memory_allocated() - before
    layers = len(model.model.layers)
    assert abs(after) <= layers << 20, after  # same bytes of weights (up to the allocator's rounding), no copy kept
    assert largest <= peak <= largest + max(after, 0) + (2 << 20), (peak, largest, after)


def test_flex_options_name_a_sweep_configuration():
    """Notebook 09 gives its Flex variant a configuration of kernels.benchmark.FLEX_CONFIGS (issue 11)."""
    from kernels.benchmark import FLEX_CONFIGS
    from lib import hf_attention

    try:
        assert latency.flex_options("tma_128x64_w4_s2") == FLEX_CONFIGS["tma_128x64_w4_s2"]
        assert hf_attention._flex_options == FLEX_CONFIGS["tma_128x64_w4_s2"]
        with pytest.raises(ValueError, match="unknown FlexAttention configuration 'fast'.*default"):
            latency.flex_options("fast")
        assert latency.flex_options("default") is None and hf_attention._flex_options == {}
    finally:
        latency.flex_options(None)

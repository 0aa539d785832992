"""transformers integration of the block-sparse attention (lib.hf_attention), on a tiny random Qwen2."""
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")

from lib import hf_attention, masks  # noqa: E402

BS = 8  # small blocks so a 64-token sequence spans 8 blocks and the power pattern is really sparse


def tiny_qwen2(attn="sdpa", seed=0, layers=2):
    torch.manual_seed(seed)
    config = transformers.Qwen2Config(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        attn_implementation=attn,
    )
    model = transformers.Qwen2ForCausalLM(config).eval()
    # Rope rotates q/k, so make q·k scores large enough that masking changes the output visibly.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8)
    return model.double()


def ids(n, seed=1, batch=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 97, (batch, n), generator=g)


def dense_eager_reference(model, input_ids, pattern, **cfg):
    """Same weights, eager attention with the dense token mask passed as a 4D additive mask."""
    n = input_ids.shape[1]
    ref = tiny_qwen2("eager", layers=len(model.model.layers))
    ref.load_state_dict(model.state_dict())
    allowed = masks.token_mask(pattern, n, BS, **cfg)
    add = torch.zeros(n, n, dtype=torch.float64).masked_fill(~allowed, float("-inf"))
    add = add[None, None].expand(input_ids.shape[0], 1, n, n)
    with torch.no_grad():
        return ref(input_ids, attention_mask=add).logits


@pytest.mark.parametrize("backend", ["reference", "flex"])
def test_full_pattern_equals_sdpa(backend):
    x = ids(45)
    base = tiny_qwen2("sdpa")
    with torch.no_grad():
        want = base(x).logits
    model = hf_attention.use_sparse_attention(tiny_qwen2("sdpa"), "full", block_size=BS, backend=backend)
    assert model.config._attn_implementation == hf_attention.ATTN_IMPLEMENTATION
    with torch.no_grad():
        got = model(x).logits
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("backend", ["reference", "flex"])
@pytest.mark.parametrize("pattern,cfg", [("power", dict(window=2, sink=1)), ("sliding_window", dict(window=3, sink=1)),
                                         ("stride_slash", dict(window=2, stride=3, sink=0))])
def test_sparse_pattern_equals_dense_masked_eager(backend, pattern, cfg):
    x = ids(61)  # not a multiple of the block size
    model = hf_attention.use_sparse_attention(tiny_qwen2(), pattern, block_size=BS, backend=backend, **cfg)
    with torch.no_grad():
        got = model(x).logits
    want = dense_eager_reference(model, x, pattern, **cfg)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-7)
    # ...and the pattern matters: full attention gives different logits.
    with torch.no_grad():
        full = tiny_qwen2("sdpa")(x).logits
    assert (got - full).abs().max() > 1e-3


def test_hybrid_full_layers():
    assert hf_attention.hybrid_full_layers(28) == (5, 6, 12, 13, 19, 20, 26, 27)
    assert hf_attention.hybrid_full_layers(3, every=3, full=1) == (2,)
    x = ids(40)
    model = hf_attention.use_sparse_attention(tiny_qwen2(layers=3), "power", block_size=BS, backend="reference",
                                              full_layers=(1,), window=2)
    with torch.no_grad():
        hybrid = model(x).logits
        model.config.block_sparse["full_layers"] = []
        sparse = model(x).logits
    assert (hybrid - sparse).abs().max() > 1e-3


def test_generate_with_cache_matches_full_recompute():
    cfg = dict(window=2, sink=1)
    model = hf_attention.use_sparse_attention(tiny_qwen2(), "power", block_size=BS, backend="reference", **cfg)
    x = ids(29, batch=1)
    with torch.no_grad():
        out = model.generate(x, max_new_tokens=24, do_sample=False, use_cache=True, pad_token_id=0)
        # Greedy recompute without a cache, under the same mask, token by token.
        seq = x
        for _ in range(24):
            logits = model(seq, use_cache=False).logits[:, -1]
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    # Cached decode logits equal the recompute's at every new position (crosses block boundaries 32, 40, 48).
    with torch.no_grad():
        full_logits = model(seq, use_cache=False).logits
        cache = transformers.DynamicCache(config=model.config)
        pre = model(seq[:, :29], past_key_values=cache, use_cache=True).logits
        steps = [model(seq[:, i:i + 1], past_key_values=cache, use_cache=True).logits for i in range(29, seq.shape[1])]
    torch.testing.assert_close(torch.cat([pre] + steps, dim=1), full_logits, rtol=1e-7, atol=1e-7)


def test_static_cache_decode_matches():
    """The fixed-size gather decode (the CUDA-graph path) over a static cache with empty slots."""
    cfg = dict(window=2, sink=1)
    model = hf_attention.use_sparse_attention(tiny_qwen2(), "power", block_size=BS, backend="flex", **cfg)
    seq = ids(50, batch=2)
    with torch.no_grad():
        want = model(seq, use_cache=False).logits[:, 30:]
        cache = transformers.StaticCache(config=model.config, max_cache_len=80)
        model(seq[:, :30], past_key_values=cache, use_cache=True)
        got = [model(seq[:, i:i + 1], past_key_values=cache, use_cache=True,
                     position_ids=torch.full((2, 1), i)).logits for i in range(30, 50)]
    torch.testing.assert_close(torch.cat(got, dim=1), want, rtol=1e-7, atol=1e-7)


def test_from_pretrained_with_config_entry(tmp_path):
    model = hf_attention.use_sparse_attention(tiny_qwen2(), "power", block_size=BS, backend="reference", window=2)
    model.save_pretrained(tmp_path)
    loaded = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path, attn_implementation=hf_attention.ATTN_IMPLEMENTATION,
                                                           dtype=torch.float64).eval()
    assert loaded.config.block_sparse["pattern"] == "power"
    x = ids(33)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=1e-9, atol=1e-9)


def test_errors():
    model = tiny_qwen2()
    with pytest.raises(ValueError, match="unknown pattern"):
        hf_attention.use_sparse_attention(model, "powerr")
    with pytest.raises(ValueError, match="unknown config keyword"):
        hf_attention.use_sparse_attention(model, "power", stride=3)
    with pytest.raises(ValueError, match="unknown backend"):
        hf_attention.use_sparse_attention(model, "power", backend="cuda")
    with pytest.raises(ValueError, match="full_layers"):
        hf_attention.use_sparse_attention(model, "power", full_layers=(5,))
    with pytest.raises(TypeError, match="PreTrainedModel"):
        hf_attention.use_sparse_attention(torch.nn.Linear(2, 2), "power")

    class NoBackend(transformers.Qwen2ForCausalLM):
        _supports_attention_backend = False

    with pytest.raises(TypeError, match="cannot be swapped"):
        hf_attention.use_sparse_attention(NoBackend(model.config), "power")

    model = hf_attention.use_sparse_attention(tiny_qwen2(), "power", block_size=BS, backend="reference", max_context=32)
    with torch.no_grad():
        model(ids(32))
        with pytest.raises(ValueError, match="exceeds max_context=32"):
            model(ids(33))
        with pytest.raises(ValueError, match="padding masks are not supported"):
            mask = torch.ones(2, 20, dtype=torch.long)
            mask[0, :3] = 0
            model(ids(20), attention_mask=mask)
        model(ids(20), attention_mask=torch.ones(2, 20, dtype=torch.long))  # all-ones mask is fine


@pytest.mark.parametrize("full_layers", [(), (1,)])
def test_graph_decode_path_matches(full_layers):
    """decode="graph" (what a CUDA-graph loop captures), incl. a dense hybrid layer, over a static cache."""
    cfg = dict(window=2, sink=1)
    model = hf_attention.use_sparse_attention(tiny_qwen2(), "power", block_size=BS, backend="reference",
                                              full_layers=full_layers, decode="graph", **cfg)
    seq = ids(45, batch=2, seed=3)
    pos = torch.zeros(2, 1, dtype=torch.long)
    with torch.no_grad():
        want = model(seq, use_cache=False).logits[:, 20:]
        cache = transformers.StaticCache(config=model.config, max_cache_len=64)
        model(seq[:, :20], past_key_values=cache, use_cache=True)
        got = []
        for i in range(20, 45):
            pos.fill_(i)  # one buffer updated in place, as in the graph loop: the block memo must notice
            got.append(model(seq[:, i:i + 1], past_key_values=cache, use_cache=True, position_ids=pos).logits)
    torch.testing.assert_close(torch.cat(got, dim=1), want, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("pattern,cfg", [("power", dict(window=2, sink=1)), ("full", {}),
                                         ("sliding_window", dict(window=3, sink=1))])
def test_graph_decode_kernel_vs_float64(pattern, cfg):
    """The graph-safe decode kernel (interpreter on CPU) against a float64 dense reference."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a GPU or the Triton interpreter")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    err = hf_attention.check_decode_kernel(device, torch.float32, batch=2, heads=(6, 2), head_dim=32, seq=203, block_size=16,
                             pattern=pattern, seed=len(pattern), **cfg)
    assert err < 1e-4


def test_flex_kernel_options_are_set_and_checked():
    """The end-to-end Flex baseline can be given its fastest kernel_options (issue 11); bad input is refused."""
    try:
        hf_attention.set_flex_kernel_options(dict(BLOCK_M=128, BLOCK_N=128, num_warps=8))
        assert hf_attention._flex_options == dict(BLOCK_M=128, BLOCK_N=128, num_warps=8)
        with pytest.raises(TypeError, match="kernel_options must be a dict"):
            hf_attention.set_flex_kernel_options("tma")
        assert hf_attention._flex_options["num_warps"] == 8  # nothing lost by the refused call
    finally:
        hf_attention.set_flex_kernel_options(None)
    assert hf_attention._flex_options == {}

"""The "distance_set" pattern (issue 13) against an independent numpy transcription of its rule.

Rule (lib/masks/distance_set.py): query block i reads key block j when i - j < window, or
i - j is one of the distances, or j < sink; plus token causality. The reference below is
written from that sentence alone, at token level, in numpy; the kernel test compares the
Triton kernels (interpreter on CPU) with a float64 dense softmax under that reference mask.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kernels
import lib.masks as masks


def ref_distance_set(q_idx, kv_idx, block_size, distances=(), window=1, sink=0):
    dist = q_idx // block_size - kv_idx // block_size
    chosen = (dist < window) | np.isin(dist, list(distances)) | (kv_idx // block_size < sink)
    return (q_idx >= kv_idx) & chosen


def ref_token_mask(seq_len, block_size, **config):
    idx = np.arange(seq_len, dtype=np.int64)
    return np.asarray(ref_distance_set(idx[:, None], idx[None, :], block_size, **config))


def ref_block_layout(num_blocks, **config):
    return ref_token_mask(num_blocks, 1, **config)  # one token per block: the block layout itself


@st.composite
def configs(draw):
    return dict(distances=draw(st.lists(st.integers(1, 48), max_size=8)),
                window=draw(st.integers(1, 10)), sink=draw(st.integers(0, 4)))


SETTINGS = settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cfg=configs(), block_size=st.integers(1, 9), seq_len=st.integers(1, 260))
def test_token_mask_and_layouts_match_reference(cfg, block_size, seq_len):
    ref = ref_token_mask(seq_len, block_size, **cfg)
    np.testing.assert_array_equal(masks.token_mask("distance_set", seq_len, block_size, **cfg).numpy(), ref)
    nb = -(-seq_len // block_size)
    ref_blocks = ref_block_layout(nb, **cfg)
    np.testing.assert_array_equal(masks.block_layout("distance_set", nb, **cfg).numpy(), ref_blocks)
    lay = masks.layout("distance_set", seq_len, block_size, **cfg)
    np.testing.assert_array_equal(lay.to_dense().numpy(), ref_blocks)
    np.testing.assert_array_equal(lay.token_mask().numpy(), ref)
    # mask_mod on broadcast index tensors (the FlexAttention form) gives the same mask.
    idx = torch.arange(seq_len)
    mm = masks.mask_mod("distance_set", block_size, **cfg)
    np.testing.assert_array_equal(mm(None, None, idx[:, None], idx[None, :]).numpy(), ref)


@SETTINGS
@given(cfg=configs(), num_blocks=st.integers(1, 80))
def test_distances_order_and_duplicates_do_not_matter(cfg, num_blocks):
    shuffled = dict(cfg, distances=list(reversed(cfg["distances"])) + cfg["distances"][:2])
    assert torch.equal(masks.block_layout("distance_set", num_blocks, **cfg),
                       masks.block_layout("distance_set", num_blocks, **shuffled))


@pytest.mark.parametrize("num_blocks", [1, 7, 128, 300])
def test_paper_patterns_are_distance_sets(num_blocks):
    """PowerAttention, stride slash and sliding window are special cases (with their §4.1 configs)."""
    pw = masks.section41_config("power", num_blocks)
    pow2 = [2 ** i for i in range(max(num_blocks, 1).bit_length())]
    assert torch.equal(masks.block_layout("power", num_blocks, **pw),
                       masks.block_layout("distance_set", num_blocks, distances=pow2, **pw))
    ss = masks.section41_config("stride_slash", num_blocks)
    mult = list(range(ss["stride"], num_blocks, ss["stride"]))
    assert torch.equal(masks.block_layout("stride_slash", num_blocks, **ss),
                       masks.block_layout("distance_set", num_blocks, distances=mult, window=ss["window"],
                                          sink=ss["sink"]))
    sw = masks.section41_config("sliding_window", num_blocks)
    assert torch.equal(masks.block_layout("sliding_window", num_blocks, **sw),
                       masks.block_layout("distance_set", num_blocks, **sw))


def test_defaults_are_the_diagonal_only():
    assert torch.equal(masks.block_layout("distance_set", 6), torch.eye(6, dtype=torch.bool))
    assert "distance_set" in masks.NAMES and "distance_set" not in masks.PATTERNS


@pytest.mark.parametrize("kwargs,words", [
    (dict(distances=(0,)), "positive integer"),
    (dict(distances=(4, -2)), "positive integer"),
    (dict(distances=(2.5,)), "positive integer"),
    (dict(distances=(True,)), "positive integer"),
    (dict(distances=("8",)), "positive integer"),
    (dict(distances="8,16"), "sequence of positive integers"),
    (dict(distances=8), "sequence of positive integers"),
    (dict(distances=range(1, 300)), "at most"),
    (dict(window=0), "'window' must be an integer >= 1"),
    (dict(window=-3), "'window' must be an integer >= 1"),
    (dict(window=2.0), "'window' must be an integer >= 1"),
    (dict(sink=-1), "'sink' must be an integer >= 0"),
    (dict(stride=4), "unknown config keyword"),
])
def test_bad_config_raises_clear_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        masks.block_layout("distance_set", 8, **kwargs)
    with pytest.raises(ValueError, match=words):
        masks.layout("distance_set", 64, 8, **kwargs)
    with pytest.raises(ValueError, match=words):
        masks.mask_mod("distance_set", 8, **kwargs)


def _dense_softmax(q, k, v, mask):
    g = q.shape[1] // k.shape[1]
    k, v = k.double().repeat_interleave(g, 1), v.double().repeat_interleave(g, 1)
    s = (q.double() @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v


SMALL_TILES = {kernel: dict(BLOCK_M=16, BLOCK_N=16) for kernel in ("fwd", "dq", "dkdv")}


def test_triton_forward_backward_matches_dense_reference():
    """Triton kernels (interpreter on CPU) vs float64 dense softmax under the numpy reference mask:
    75 tokens (5 blocks of 16, the last partial), GQA 4/2 heads, float32, output and gradients."""
    S, bs, cfg = 75, 16, dict(distances=(3,), window=2, sink=1)
    mask = torch.from_numpy(ref_token_mask(S, bs, **cfg))
    assert not ref_block_layout(5, **cfg)[4, 2]  # block 2 is skipped by the last block: the pattern is sparse
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(1, h, S, 16, generator=g) for h in (4, 2, 2))
    do = torch.randn(1, 4, S, 16, generator=g)
    qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
    out = kernels.sparse_attention(qq, kk, vv, "distance_set", bs, backend="triton", kernel_config=SMALL_TILES, **cfg)
    out.backward(do)
    qr, kr, vr = (t.double().requires_grad_() for t in (q, k, v))
    ref = _dense_softmax(qr, kr, vr, mask)
    ref.backward(do.double())
    for got, want in ((out, ref), (qq.grad, qr.grad), (kk.grad, kr.grad), (vv.grad, vr.grad)):
        assert torch.isfinite(got).all()
        err = float((got.detach().double() - want.detach()).norm() / want.detach().norm())
        assert err < 2e-4, err

"""The six masks of lib.masks against an independent transcription of the paper.

The ``ref_*`` functions below are Algorithms 1-5 (Appendix D) copied at token
level into numpy, with only the changes documented in lib/masks/*.py:
the sink and window sizes are parameters (the paper hard-codes one sink block,
``kv_idx < block_size``), Algorithm 4's undefined ``mask_window`` is empty,
its dilation is generalised from ``& 1`` (every 2nd block) to ``% (dilation + 1)``,
and Algorithm 5's ``q_idx_b * kv_idx_b`` is read as XOR. ``x & 1 == 0`` is kept
as printed: in Python it parses as ``(x & 1) == 0``.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import lib.masks as masks

# -- Algorithms 1-5, token level ------------------------------------------------


def ref_power(q_idx, kv_idx, block_size, window=5, sink=1):  # Algorithm 1
    mask_sink = kv_idx < sink * block_size
    blk_qk = q_idx // block_size - kv_idx // block_size
    mask_window = blk_qk < window
    mask_power = (blk_qk & (blk_qk - 1)) == 0
    causal = q_idx >= kv_idx
    return causal & (mask_window | mask_power | mask_sink)


def ref_sliding_window(q_idx, kv_idx, block_size, window=9, sink=1):  # Algorithm 2
    mask_sink = kv_idx < sink * block_size
    blk_qk = q_idx // block_size - kv_idx // block_size
    mask_window = blk_qk < window
    causal = q_idx >= kv_idx
    return causal & (mask_window | mask_sink)


def ref_stride_slash(q_idx, kv_idx, block_size, window=6, stride=32, sink=1):  # Algorithm 3
    mask_sink = kv_idx < sink * block_size
    blk_qk = q_idx // block_size - kv_idx // block_size
    mask_window = blk_qk < window
    mask_slash = blk_qk % stride == 0
    causal = q_idx >= kv_idx
    return causal & (mask_window | mask_slash | mask_sink)


def ref_dilated(q_idx, kv_idx, block_size, window=20, dilation=1, sink=0):  # Algorithm 4
    blk_qk = q_idx // block_size - kv_idx // block_size
    if dilation == 1:  # as printed
        mask_dilated = (blk_qk & 1 == 0) & (blk_qk < window)
    else:
        mask_dilated = (blk_qk % (dilation + 1) == 0) & (blk_qk < window)
    mask_window = np.zeros_like(mask_dilated)  # undefined in the paper: read as empty
    mask_sink = kv_idx < sink * block_size  # the paper has no sink here (default 0)
    causal = q_idx >= kv_idx
    return causal & (mask_window | mask_dilated | mask_sink)


def ref_longnet(q_idx, kv_idx, block_size, segments=(8, 16, 32, 64, 128), dilations=(1, 2, 4, 8, 16), sink=0):
    # Algorithm 5 with '*' read as XOR; segments/dilations are parameters (printed: 8..128 / 1..16).
    q_idx_b = q_idx // block_size
    kv_idx_b = kv_idx // block_size
    temp1_qk = q_idx_b | kv_idx_b
    temp2_qk = q_idx_b ^ kv_idx_b
    mask = kv_idx < sink * block_size
    for s, r in zip(segments, dilations):
        mask = mask | ((temp2_qk < s) & (temp1_qk & (r - 1) == 0))  # printed: temp1_qk & 1 == 0, ...
    causal = q_idx >= kv_idx
    return causal & mask


def ref_full(q_idx, kv_idx, block_size):
    return np.broadcast_to(q_idx >= kv_idx, np.broadcast_shapes(q_idx.shape, kv_idx.shape))


REFERENCES = {
    "full": ref_full,
    "sliding_window": ref_sliding_window,
    "stride_slash": ref_stride_slash,
    "dilated": ref_dilated,
    "longnet": ref_longnet,
    "power": ref_power,
}


def reference_token_mask(name, seq_len, block_size, **config):
    idx = np.arange(seq_len, dtype=np.int64)
    return np.asarray(REFERENCES[name](idx[:, None], idx[None, :], block_size, **config))


# -- random draws ---------------------------------------------------------------

_pow2 = st.sampled_from([1, 2, 4, 8, 16, 32])


@st.composite
def configs(draw):
    name = draw(st.sampled_from(masks.PATTERNS))
    window = st.integers(1, 24)
    sink = st.integers(0, 4)
    if name == "full":
        cfg = {}
    elif name in ("sliding_window", "power"):
        cfg = dict(window=draw(window), sink=draw(sink))
    elif name == "stride_slash":
        cfg = dict(window=draw(window), stride=draw(st.integers(1, 40)), sink=draw(sink))
    elif name == "dilated":
        cfg = dict(window=draw(window), dilation=draw(st.integers(0, 4)), sink=draw(sink))
    else:
        pairs = draw(st.lists(st.tuples(_pow2, _pow2).map(lambda p: (max(p), min(p))), min_size=1, max_size=5))
        cfg = dict(segments=[w for w, _ in pairs], dilations=[r for _, r in pairs], sink=draw(sink))
    # Sometimes leave keywords out so the defaults (Section 4.1) are exercised too.
    if cfg and draw(st.booleans()):
        cfg = {}
    return name, cfg


SETTINGS = settings(max_examples=150, derandomize=True, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cfg=configs(), block_size=st.integers(1, 12), seq_len=st.integers(1, 300))
def test_token_mask_matches_paper_pseudocode(cfg, block_size, seq_len):
    name, config = cfg
    ours = masks.token_mask(name, seq_len, block_size, **config).numpy()
    ref = reference_token_mask(name, seq_len, block_size, **config)
    assert ours.shape == (seq_len, seq_len)
    np.testing.assert_array_equal(ours, ref)


@SETTINGS
@given(cfg=configs(), block_size=st.integers(1, 12), seq_len=st.integers(1, 300))
def test_block_layout_agrees_with_token_mask(cfg, block_size, seq_len):
    name, config = cfg
    num_blocks = -(-seq_len // block_size)  # last block may be partial
    layout = masks.block_layout(name, num_blocks, **config).numpy()
    tokens = masks.token_mask(name, seq_len, block_size, **config).numpy()
    assert layout.shape == (num_blocks, num_blocks) and layout.dtype == bool
    # Causality at both levels.
    assert not np.triu(layout, 1).any()
    assert not np.triu(tokens, 1).any()
    # Expanding the layout to tokens and adding token causality gives the token mask ...
    blk = np.arange(seq_len) // block_size
    expanded = layout[blk[:, None], blk[None, :]] & (np.arange(seq_len)[:, None] >= np.arange(seq_len)[None, :])
    np.testing.assert_array_equal(expanded, tokens)
    # ... and a block is in the layout iff some token pair inside it is attended.
    pad = num_blocks * block_size - seq_len
    tiles = np.pad(tokens, ((0, pad), (0, pad))).reshape(num_blocks, block_size, num_blocks, block_size)
    np.testing.assert_array_equal(tiles.any(axis=(1, 3)), layout)


@pytest.mark.parametrize("name", masks.PATTERNS)
def test_mask_mod_broadcasts(name):
    block_size, seq_len = 4, 37
    mod = masks.mask_mod(name, block_size=block_size)
    dense = masks.token_mask(name, seq_len, block_size)
    b = torch.zeros(2, 1, 1, 1, dtype=torch.long)
    h = torch.zeros(1, 3, 1, 1, dtype=torch.long)
    q = torch.arange(seq_len).view(1, 1, seq_len, 1)
    kv = torch.arange(seq_len).view(1, 1, 1, seq_len)
    out = mod(b, h, q, kv)
    assert out.dtype == torch.bool
    assert torch.equal(torch.broadcast_to(out, (2, 3, seq_len, seq_len))[1, 2], dense)
    # Scalar (0-dim) indices, as FlexAttention's vmap feeds them.
    assert bool(mod(torch.tensor(0), torch.tensor(0), torch.tensor(30), torch.tensor(1))) == bool(dense[30, 1])


@pytest.mark.parametrize("name", masks.PATTERNS)
def test_mask_mod_inside_create_block_mask(name):
    from torch.nn.attention.flex_attention import create_block_mask, create_mask

    block_size, seq_len = 16, 16 * 11 + 5  # partial last block
    num_blocks = -(-seq_len // block_size)
    config = {"stride": 4} if name == "stride_slash" else {}  # a few slashes at 12 blocks
    mod = masks.mask_mod(name, block_size=block_size, **config)
    dense = create_mask(mod, 1, 1, seq_len, seq_len, device="cpu")
    assert torch.equal(dense[0, 0], masks.token_mask(name, seq_len, block_size, **config))
    bm = create_block_mask(mod, None, None, seq_len, seq_len, device="cpu", BLOCK_SIZE=block_size)
    blocks = bm.to_dense()[0, 0, :num_blocks, :num_blocks].bool()
    assert torch.equal(blocks, masks.block_layout(name, num_blocks, **config))


@SETTINGS
@given(cfg=configs(), num_blocks=st.integers(1, 80))
def test_compress_layout_round_trips(cfg, num_blocks):
    name, config = cfg
    layout = masks.block_layout(name, num_blocks, **config)
    idx, cnt = masks.compress_layout(layout)
    assert idx.dtype == torch.int32 and cnt.dtype == torch.int32
    assert idx.shape[0] == num_blocks and idx.shape[1] == max(int(cnt.max()), 1)
    assert torch.equal(cnt, layout.sum(-1).int())
    rebuilt = torch.zeros_like(layout)
    for row in range(num_blocks):
        c = int(cnt[row])
        valid = idx[row, :c].long()
        assert torch.all(valid[1:] > valid[:-1]), "indices must be strictly ascending"
        if c:  # padding repeats the last valid index
            assert torch.all(idx[row, c:] == idx[row, c - 1])
        rebuilt[row, valid] = True
    assert torch.equal(rebuilt, layout)


def test_compress_layout_batched_and_empty_rows():
    layout = torch.zeros(2, 3, 5, 5, dtype=torch.bool)
    layout[1, 2, 4, [0, 3]] = True
    idx, cnt = masks.compress_layout(layout)
    assert idx.shape == (2, 3, 5, 2) and cnt.shape == (2, 3, 5)
    assert cnt[1, 2, 4] == 2 and idx[1, 2, 4].tolist() == [0, 3]
    assert int(cnt.sum()) == 2
    assert int(idx.min()) >= 0 and int(idx.max()) <= 4  # empty rows still hold loadable indices


# Section 4.1: "~10 blocks per row" at 32K tokens = 128 blocks of 256.
@pytest.mark.parametrize("name", ["sliding_window", "stride_slash", "dilated", "power"])
def test_section_4_1_budget_is_10_blocks_at_128(name):
    per_row = masks.blocks_per_row(name, 128)
    assert int(per_row[-1]) == 10
    assert int(per_row.max()) == 10


def test_section_4_1_configs_in_detail():
    last = lambda name, **c: torch.nonzero(masks.block_layout(name, 128, **c)[-1]).flatten().tolist()
    assert last("sliding_window") == [0] + list(range(119, 128))
    assert last("stride_slash") == [0, 31, 63, 95] + list(range(122, 128))
    assert last("dilated") == list(range(109, 128, 2))
    assert last("power") == [0, 63, 95, 111, 119, 123, 124, 125, 126, 127]
    assert last("longnet") == list(range(120, 128))  # odd query block: only the w=8, r=1 segment
    assert masks.paper_stride(128) == 32
    # Power's budget grows by one block per doubling of the context.
    assert [int(masks.blocks_per_row("power", n)[-1]) for n in (128, 256, 512)] == [10, 11, 12]


def test_full_is_dense_causal():
    assert torch.equal(masks.block_layout("full", 7), torch.ones(7, 7, dtype=torch.bool).tril())


# -- bad input --------------------------------------------------------------------

BAD = [
    (lambda: masks.block_layout("powr", 8), "unknown pattern"),
    (lambda: masks.mask_mod("nope"), "unknown pattern"),
    (lambda: masks.block_layout("power", 8, window=0), "window"),
    (lambda: masks.block_layout("sliding_window", 8, window=-3), "window"),
    (lambda: masks.block_layout("stride_slash", 8, stride=0), "stride"),
    (lambda: masks.block_layout("power", 8, sink=-1), "sink"),
    (lambda: masks.block_layout("sliding_window", 8, sink=-1), "sink"),
    (lambda: masks.block_layout("dilated", 8, dilation=-1), "dilation"),
    (lambda: masks.mask_mod("power", block_size=0), "block_size"),
    (lambda: masks.mask_mod("power", block_size=2.0), "block_size"),
    (lambda: masks.mask_mod("power", block_size=True), "block_size"),
    (lambda: masks.mask_mod("power", block_size="256"), "block_size"),
    (lambda: masks.token_mask("power", 16, block_size=1.5), "block_size"),
    (lambda: masks.block_layout("power", 0), "num_blocks"),
    (lambda: masks.block_layout("power", 4.0), "num_blocks"),
    (lambda: masks.token_mask("power", 0, 4), "seq_len"),
    (lambda: masks.block_layout("power", 8, stride=4), "unknown config keyword"),
    (lambda: masks.block_layout("full", 8, window=4), "unknown config keyword"),
    (lambda: masks.block_layout("longnet", 8, segments=(8, 16), dilations=(1,)), "segments"),
    (lambda: masks.block_layout("longnet", 8, segments=(), dilations=()), "segments"),
    (lambda: masks.block_layout("longnet", 8, segments=(12,), dilations=(1,)), "segment"),
    (lambda: masks.block_layout("longnet", 8, segments=(8,), dilations=(16,)), "dilation"),
    (lambda: masks.block_layout("longnet", 8, segments=8, dilations=1), "segments"),
    (lambda: masks.block_layout("longnet", 8, segments=(8,), dilations=(0,)), "dilations"),
    (lambda: masks.paper_stride(0), "num_blocks"),
]


@pytest.mark.parametrize("call, match", BAD, ids=[m for _, m in BAD])
def test_bad_config_raises_value_error_naming_parameter(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_error_message_gives_accepted_range():
    with pytest.raises(ValueError, match=r"'window' must be an integer >= 1, got 0"):
        masks.block_layout("power", 8, window=0)
    with pytest.raises(ValueError, match=r"one of \['full'"):
        masks.block_layout("x", 8)

"""lib.masks.flex_block_mask: FlexAttention with our BlockMask computes the same mask as the token mask."""
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

import lib.masks as masks

CASES = [  # (pattern, seq_len, block_size, flex_block, config)
    ("power", 200, 16, 16, {}),
    ("sliding_window", 131, 16, 8, dict(window=3)),   # Flex tiles smaller than our blocks, ragged tail
    ("stride_slash", 97, 8, 16, dict(window=2, stride=4)),  # Flex tiles larger than our blocks
    ("dilated", 160, 16, 16, dict(window=6)),
    ("longnet", 150, 8, 8, dict(segments=(2, 4, 8), dilations=(1, 2, 4))),
    ("full", 77, 16, 16, {}),
]


@pytest.mark.parametrize("pattern,S,bs,fb,cfg", CASES, ids=[c[0] for c in CASES])
def test_flex_with_block_mask_equals_dense_masked_attention(pattern, S, bs, fb, cfg):
    g = torch.Generator().manual_seed(S)
    q, k, v = (torch.randn(1, 2, S, 16, generator=g, dtype=torch.float64) for _ in range(3))
    layout = masks.block_layout(pattern, -(-S // bs), **cfg)
    if bs % fb and fb % bs:
        pytest.skip("sizes must divide one another")
    block_mask = masks.flex_block_mask(layout, S, bs, "cpu", flex_block=fb)
    out = flex_attention(q, k, v, block_mask=block_mask)
    dense = masks.token_mask(pattern, S, bs, **cfg)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    assert torch.allclose(out, ref, atol=1e-10, rtol=0)
    if pattern != "full":  # the pattern's own mask_mod on partial tiles, as lib.hf_attention passes it
        block_mask = masks.flex_block_mask(layout, S, bs, "cpu", flex_block=fb,
                                           mask_mod=masks.mask_mod(pattern, bs, **cfg))
        assert torch.allclose(flex_attention(q, k, v, block_mask=block_mask), ref, atol=1e-10, rtol=0)


def test_block_structure_matches_layout():
    layout = masks.block_layout("power", 13)
    block_mask = masks.flex_block_mask(layout, 13 * 16, 16, "cpu", flex_block=16)
    assert torch.equal(block_mask.to_dense()[0, 0].bool(), layout)


def test_flex_block_mask_rejects_bad_input():
    layout = masks.block_layout("power", 4)
    with pytest.raises(ValueError, match="shape"):
        masks.flex_block_mask(layout, 100, 16, "cpu")  # 100 tokens need 7 blocks of 16
    with pytest.raises(ValueError, match="divide"):
        masks.flex_block_mask(masks.block_layout("power", 2), 48, 24, "cpu", flex_block=16)

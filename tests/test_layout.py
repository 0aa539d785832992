"""lib.masks.BlockLayout: the one owner of block-sparse metadata, checked against the bool layout it wraps."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lib import masks

from _configs import SMALL_CONFIGS

CONFIGS = {**SMALL_CONFIGS, "distance_set": dict(distances=(3, 5), window=2, sink=1)}


@settings(max_examples=40, deadline=None)
@given(pattern=st.sampled_from(sorted(CONFIGS)), seq_len=st.integers(1, 300), block_size=st.sampled_from([8, 16, 32]))
def test_lists_match_the_dense_layout(pattern, seq_len, block_size):
    lay = masks.layout(pattern, seq_len, block_size, **CONFIGS[pattern])
    dense = lay.to_dense()
    nb = math.ceil(seq_len / block_size)
    assert dense.shape == (nb, nb)
    assert torch.equal(dense, masks.block_layout(pattern, nb, **CONFIGS[pattern]))
    # per row: the listed entries are exactly the selected key blocks, full ones (ascending) before partial ones
    for qb in range(nb):
        n, nf = int(lay.kv_counts[qb]), int(lay.kv_full_counts[qb])
        row = lay.kv_indices[qb, :n].tolist()
        assert sorted(row) == torch.nonzero(dense[qb]).flatten().tolist()
        assert row[:nf] == sorted(row[:nf]) and all(lay.full[qb, j] for j in row[:nf])
        assert all(lay.partial[qb, j] for j in row[nf:])
        assert lay.kv_indices[qb, n:].tolist() == [row[-1]] * (lay.kv_indices.shape[1] - n) if n else True
    # partial = selected diagonal, plus a tail block that runs past the sequence end (only ever the last diagonal)
    expect = dense & torch.eye(nb, dtype=torch.bool)
    assert torch.equal(lay.partial, expect)
    assert torch.equal(lay.full | lay.partial, dense) and not (lay.full & lay.partial).any()
    # transposed lists
    for kb in range(nb):
        n = int(lay.q_counts[kb])
        assert lay.q_indices[kb, :n].tolist() == torch.nonzero(dense[:, kb]).flatten().tolist()


@settings(max_examples=30, deadline=None)
@given(pattern=st.sampled_from(sorted(CONFIGS)), nb=st.integers(1, 40), chunk=st.integers(1, 5))
def test_work_items_cover_every_pair_once(pattern, nb, chunk):
    lay = masks.layout(pattern, nb * 16, 16, **CONFIGS[pattern])
    q_lists, items = lay.work_items(chunk)
    seen = torch.zeros(nb, nb, dtype=torch.int64)
    for kb, off, cnt, has_partial in items.tolist():
        assert cnt <= chunk
        for qb in q_lists[off:off + cnt].tolist():
            seen[qb, kb] += 1
        seen[kb, kb] += has_partial
    assert torch.equal(seen, lay.to_dense().long())
    lengths = [c + p for _, _, c, p in items.tolist()]
    assert lengths == sorted(lengths, reverse=True)


def test_decode_rows_and_plan_agree_with_the_layout():
    lay = masks.layout("power", 1000, 16, window=2, sink=1)
    dense = lay.to_dense()
    for pos in (0, 15, 16, 500, 999):
        blocks, valid = lay.decode_rows(torch.tensor([pos]))
        assert blocks.shape == (lay.max_count,)
        assert sorted(blocks[valid].tolist()) == torch.nonzero(dense[pos // 16]).flatten().tolist()
    plan = lay.decode_plan(3)
    rows = dense[[997 // 16, 998 // 16, 999 // 16]]
    assert plan.blocks.tolist() == torch.nonzero(rows.any(0)).flatten().tolist()
    assert lay.decode_plan(3) is plan  # cached: every layer of a step shares it


def test_sparsity_and_repr():
    lay = masks.layout("sliding_window", 128 * 256, 256)
    n = 128
    assert lay.sparsity("causal") == pytest.approx(1 - lay.num_selected / (n * (n + 1) / 2))
    assert lay.sparsity("last_row") == pytest.approx(1 - 10 / 128)
    assert "sliding_window" in repr(lay)
    with pytest.raises(ValueError, match="sparsity kind"):
        lay.sparsity("diagonal")


def test_named_layouts_are_cached_and_validated_once():
    a = masks.layout("power", 4096, 64)
    assert masks.layout("power", 4096, 64, window=5, sink=1) is a  # defaults spelled out: same object
    with pytest.raises(ValueError, match="unknown config"):
        masks.layout("power", 4096, 64, stride=3)
    with pytest.raises(ValueError, match="unknown pattern"):
        masks.layout("powr", 4096, 64)
    with pytest.raises(ValueError, match="needs"):
        masks.layout(torch.ones(3, 3, dtype=torch.bool), 100, 16)
    with pytest.raises(ValueError, match="seq_len"):
        masks.layout(a, 4000, 64)


def test_token_mask_and_mask_mod_match_the_paper_masks():
    lay = masks.layout("longnet", 200, 8, **CONFIGS["longnet"])
    assert torch.equal(lay.token_mask(), masks.token_mask("longnet", 200, 8, **CONFIGS["longnet"]))


def test_section41_config_is_the_papers():
    assert masks.section41_config("stride_slash") == dict(window=6, stride=32, sink=1)
    assert masks.section41_config("stride_slash", 256) == dict(window=6, stride=64, sink=1)
    assert masks.section41_config("power") == dict(window=5, sink=1)
    assert masks.section41_config("sliding_window") == dict(window=9, sink=1)
    assert masks.section41_config("dilated") == dict(window=20, dilation=1, sink=0)
    for name in masks.PATTERNS:  # 10 blocks in the last row at the paper's 128 blocks (LongNet: its own budget)
        row = masks.block_layout(name, 128, **masks.section41_config(name))[-1].sum()
        assert name in ("full", "longnet") or int(row) == 10
    with pytest.raises(ValueError, match="unknown pattern"):
        masks.section41_config("distance_set")


@pytest.mark.parametrize("pattern", ["power", "sliding_window", "dilated"])
def test_decode_rows_never_reads_the_device_on_the_host(pattern):
    """decode_rows runs inside a CUDA-graph capture (notebook 09's decode): no op may read a device value on the
    host (``aten._local_scalar_dense``, what ``.item()`` and indexing by a 0-dim tensor do: a sync, which
    invalidates the capture). Checked on CPU by recording the ops dispatched; the rows are the table's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from lib.hf_attention import _step_blocks

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    lay = masks.layout(pattern, 4000, 256)
    tables = lay.tables("cpu")  # built before a capture, as a warm-up step does
    for p in (0, 255, 256, 1999, 3999, 10**6):
        pos = torch.tensor([p])
        with Ops() as ops:
            blocks, valid = lay.decode_rows(pos)
            _step_blocks(pos.reshape(1, 1), pos, 4000, pattern, 256, {})
        assert not any("_local_scalar_dense" in n for n in ops.names), ops.names
        qb = min(p // 256, lay.num_blocks - 1)
        assert torch.equal(blocks, tables.kv_indices[qb].long())
        assert valid.tolist() == [i < int(tables.kv_counts[qb]) for i in range(blocks.numel())]

"""The decode's programmatic-dependent-launch setting (``PDL``, issue 11) and the per-call work of
``decode_at_position``.

PDL changes when the merge (and, with 2, the split) kernel may start, never what it computes: with
any setting the output equals ``PDL=0`` bit for bit. On a Hopper GPU this runs the PDL launches
(``gdc_wait`` / ``gdc_launch_dependents``); elsewhere (the interpreter, older GPUs) the setting is
accepted and ignored, which is checked too. Whether PDL is *faster* is a GPU benchmark
(``scripts/kernel_check.py --variants``), not a test. A merge that did not wait would read stale
partials: the GPU check that catches it replays a CUDA graph with fresh queries
(``kernel_check.graph_replay_check``).
"""
import pytest
import torch

import kernels
from kernels import decode as kdec
from kernels import plan as kplan
from kernels.reference import reference_decode_at_position
from kernels.tiles import tiles_for
from lib import masks
from _configs import SMALL_CONFIGS

CFG = SMALL_CONFIGS["power"]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def inputs(seed, B, Hq, Hkv, S, T, D, dtype):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, T, D, generator=g).to(dtype)
    k, v = (torch.randn(B, Hkv, S, D, generator=g).to(dtype) for _ in range(2))
    return q.to(DEVICE), k.to(DEVICE), v.to(DEVICE)


@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("fused", [0, 1])
def test_pdl_changes_no_bit(T, fused):
    S, bs = 131, 16
    q, k, v = inputs(11 + T, 2, 6, 2, S, T, 16, torch.float16)
    outs = {}
    with kplan.poisoned_outputs():
        for pdl in (0, 1, 2):
            outs[pdl] = kernels.sparse_decode(q, k, v, "power", bs, backend="triton", **CFG, kernel_config={
                "decode": dict(BLOCK_N=16, NUM_SPLITS=3, PDL=pdl, FUSED=fused)})
    assert torch.isfinite(outs[0]).all()
    assert torch.equal(outs[1], outs[0]) and torch.equal(outs[2], outs[0])


def test_pdl_only_where_the_gpu_has_it():
    """The launcher asks for PDL only on CUDA devices of compute capability >= 9 (Hopper)."""
    assert not kdec._pdl_capable(torch.device("cpu"))
    if torch.cuda.is_available():
        assert kdec._pdl_capable(torch.device("cuda")) == (torch.cuda.get_device_capability()[0] >= 9)


def test_pdl_setting_is_validated():
    assert tiles_for("decode", 64, torch.float16, 256, {"PDL": 2}).kwargs["PDL"] == 2
    with pytest.raises(ValueError, match="PDL"):
        tiles_for("decode", 64, torch.float16, 256, {"PDL": 1.5})


def test_decode_at_position_reads_a_bool_mask_in_place(monkeypatch):
    """A graphed decode step calls ``decode_at_position`` once per layer: a bool ``valid`` (what
    ``BlockLayout.decode_rows`` returns) reaches the kernel as an int8 view of the same memory (no
    conversion kernel), and the result is the same as with an int8 copy and the float64 reference."""
    S, bs = 150, 16
    q, k, v = inputs(5, 2, 6, 2, S, 1, 16, torch.float32)
    lay = masks.layout("power", S, bs, **CFG)
    pos = torch.tensor([97], device=DEVICE)
    blocks, valid = lay.decode_rows(pos)
    assert valid.dtype == torch.bool
    seen = []
    launch = kdec._launch

    def spy(q_, k_, v_, blocks_, allowed, *rest):
        seen.append(allowed)
        return launch(q_, k_, v_, blocks_, allowed, *rest)

    monkeypatch.setattr(kdec, "_launch", spy)
    out = kdec.decode_at_position(q, k, v, blocks, valid, pos, bs)
    as_int8 = kdec.decode_at_position(q, k, v, blocks, valid.to(torch.int8), pos, bs)
    assert seen[0].dtype == torch.int8 and seen[0].data_ptr() == valid.data_ptr()
    ref = reference_decode_at_position(q.double(), k.double(), v.double(), blocks, valid, pos, bs)
    assert torch.equal(out, as_int8)
    assert float((out.double().cpu() - ref.cpu()).norm() / ref.norm()) < 1e-5

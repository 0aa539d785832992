"""kernels.tiles: the triton.Config tables, their lookup (caps) and the kernel_config overrides."""
import pytest
import torch
import triton

import kernels
from kernels import tiles


def settings(cfg):
    return dict(cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def test_table_covers_every_kernel_head_dim_and_dtype():
    for kernel in tiles.KERNELS:
        for head_dim in tiles.HEAD_DIMS:
            for dtype in tiles.DTYPES:
                cfg = tiles.TILES[(kernel, head_dim, dtype)]
                assert isinstance(cfg, triton.Config)
                assert set(cfg.kwargs) == set(tiles.SETTINGS[kernel])
    assert set(tiles.HEAD_DIMS) == set(kernels.TRITON_HEAD_DIMS)


def test_defaults_are_the_h100_sweep():
    """kernels/NOTES.md: forward 128x128/8 warps/3 stages, dQ 128x128/8/2, dK/dV 64x64/4/2, all TMA;
    decode BLOCK_N 64, 4 warps, 3 stages, automatic splits, programmatic dependent launch of both kernels."""
    assert settings(tiles.tiles_for("fwd", 128, torch.bfloat16, 256)) == dict(
        BLOCK_M=128, BLOCK_N=128, USE_TMA=1, WARP_SPEC=0, num_warps=8, num_stages=3)
    assert settings(tiles.tiles_for("dq", 128, torch.bfloat16, 256)) == dict(
        BLOCK_M=128, BLOCK_N=128, USE_TMA=1, num_warps=8, num_stages=2)
    assert settings(tiles.tiles_for("dkdv", 128, torch.bfloat16, 256)) == dict(
        BLOCK_M=64, BLOCK_N=64, USE_TMA=1, num_warps=4, num_stages=2)
    assert settings(tiles.tiles_for("decode", 128, torch.bfloat16, 256)) == dict(
        BLOCK_N=64, NUM_SPLITS=0, FUSED=0, PDL=2, num_warps=4, num_stages=3)


def test_head_dim_64_forward_entry():
    """The SmolLM2-shape measurement (head dim 64, half precision): 128x64 tiles, 4 warps, 2 stages.
    Head dim 128, fp32 and the backward keep the defaults."""
    d64 = dict(BLOCK_M=128, BLOCK_N=64, USE_TMA=1, WARP_SPEC=0, num_warps=4, num_stages=2)
    for dtype in (torch.bfloat16, torch.float16, "bf16", "fp16"):
        assert settings(tiles.tiles_for("fwd", 64, dtype, 256)) == d64
    assert settings(tiles.tiles_for("fwd", 128, torch.float16, 256))["BLOCK_N"] == 128
    assert settings(tiles.tiles_for("fwd", 64, torch.float32, 256)) == settings(tiles.TILES[("fwd", 128, "bf16")])
    for kernel in ("dq", "dkdv", "decode"):
        assert settings(tiles.tiles_for(kernel, 64, torch.bfloat16, 256)) == settings(tiles.TILES[(kernel, 128, "bf16")])


@pytest.mark.parametrize("kernel", tiles.KERNELS)
def test_caps_by_block_size_and_fp32_shared_memory(kernel):
    for key in ("BLOCK_M", "BLOCK_N"):
        if key not in tiles.SETTINGS[kernel]:
            continue
        # A tile never spans two mask blocks.
        assert tiles.tiles_for(kernel, 128, torch.bfloat16, 32).kwargs[key] == 32
        assert tiles.tiles_for(kernel, 128, torch.bfloat16, 16, {key: 128}).kwargs[key] == 16
        # fp32 tiles are twice as large: at head dim > 64 at most 64 wide (both decode entry points alike).
        assert tiles.tiles_for(kernel, 128, torch.float32, 256).kwargs[key] <= 64
        assert tiles.tiles_for(kernel, 128, torch.float32, 256, {key: 128}).kwargs[key] == 64
        assert tiles.tiles_for(kernel, 64, torch.float32, 256, {key: 128}).kwargs[key] == 128
    assert tiles.tiles_for("decode", 128, torch.float32, 256).kwargs["BLOCK_N"] == 64


def test_overrides_config_and_dict():
    base = tiles.TILES[("fwd", 128, "bf16")]
    # A triton.Config sets warps and stages (its own defaults when not given) and the kwargs it names.
    cfg = tiles.tiles_for("fwd", 128, "bf16", 256, triton.Config({"BLOCK_N": 32}, num_warps=2))
    assert settings(cfg) == dict(BLOCK_M=128, BLOCK_N=32, USE_TMA=1, WARP_SPEC=0, num_warps=2, num_stages=3)
    # A dict changes only what it names.
    cfg = tiles.tiles_for("fwd", 128, "bf16", 256, {"num_stages": 2, "USE_TMA": False})
    assert settings(cfg) == dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=0, WARP_SPEC=0, num_warps=8, num_stages=2)
    # The table is never modified by a lookup.
    assert settings(base) == dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=1, WARP_SPEC=0, num_warps=8, num_stages=3)
    assert tiles.tiles_for("fwd", 128, "bf16", 256) is not base
    assert settings(tiles.tiles_for("fwd", 128, "bf16", 256)) == settings(base)


@pytest.mark.parametrize("override,words", [
    ({"BLOCK_M": 24}, "power of two"),
    ({"BLOCK_N": 8}, "power of two"),
    ({"num_warps": 0}, "num_warps"),
    ({"BLOCK_M": 64.5}, "integer"),
    ({"BLOCK_K": 64}, r"unknown fwd settings \['BLOCK_K'\].*accepted: \['BLOCK_M', 'BLOCK_N', 'USE_TMA', 'WARP_SPEC'\]"),
])
def test_bad_override_values(override, words):
    with pytest.raises(ValueError, match=words):
        tiles.tiles_for("fwd", 128, "bf16", 256, override)


def test_unknown_kernel_config_keys_name_the_accepted_ones():
    with pytest.raises(ValueError, match=r"unknown kernel_config keys \['fwd_BLOCK_M'\]; accepted: \['fwd', 'dq', "
                                         r"'dkdv', 'decode'\].*'bwd_chunk'"):
        tiles.check_overrides({"fwd_BLOCK_M": 64})
    with pytest.raises(ValueError, match=r"unknown decode settings \['num_splits'\]"):
        tiles.check_overrides({"decode": {"num_splits": 4}})
    with pytest.raises(ValueError, match="bwd_chunk"):
        tiles.check_overrides({"bwd_chunk": 0})
    with pytest.raises(TypeError, match="triton.Config or a dict"):
        tiles.check_overrides({"dq": 128})
    with pytest.raises(TypeError, match="kernel_config must be a dict"):
        tiles.check_overrides([("fwd", {})])
    with pytest.raises(ValueError, match="head dim"):
        tiles.tiles_for("fwd", 96, "bf16", 256)
    with pytest.raises(ValueError, match="dtypes"):
        tiles.tiles_for("fwd", 64, torch.float64, 256)
    assert tiles.check_overrides(None) == {}


def test_entry_points_check_kernel_config_on_every_backend():
    q = torch.randn(1, 2, 40, 16)
    k = v = torch.randn(1, 1, 40, 16)
    for backend in ("reference", "triton"):
        with pytest.raises(ValueError, match="unknown kernel_config keys"):
            kernels.sparse_attention(q, k, v, "power", 16, backend=backend, kernel_config={"dq_BLOCK_M": 64})
        with pytest.raises(ValueError, match="unknown decode settings"):
            kernels.sparse_decode(q[:, :, -1:], k, v, "power", 16, backend=backend,
                                  kernel_config={"decode": {"BLOCK_M": 16}})


def test_tiles_file_replaces_entries_in_a_fresh_process(tmp_path):
    """POWERATTN_TILES (a tuning run's adopted entries, scripts/kernel_check.py --variants) replaces the named
    entries at import and leaves the others; a bad file is refused with the entry named."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    good = tmp_path / "tiles.json"
    good.write_text(json.dumps([dict(kernel="fwd", head_dim=128, dtype="bf16", kwargs=dict(WARP_SPEC=1, BLOCK_N=64),
                                     num_warps=4, why="a note")]))
    code = ("import json, torch; from kernels import tiles; c = tiles.tiles_for('fwd', 128, torch.bfloat16, 256); "
            "d = tiles.tiles_for('fwd', 128, torch.float16, 256); "
            "print(json.dumps([dict(c.kwargs, w=c.num_warps, s=c.num_stages), d.kwargs['WARP_SPEC'], "
            "len(tiles.FILE_OVERRIDES)]))")
    env = dict(os.environ, POWERATTN_TILES=str(good), PYTHONPATH=root)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg, fp16_ws, n = json.loads(out.stdout.strip().splitlines()[-1])
    assert cfg == dict(BLOCK_M=128, BLOCK_N=64, USE_TMA=1, WARP_SPEC=1, w=4, s=3) and fp16_ws == 0 and n == 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([dict(kernel="fwd", head_dim=128, dtype="bf16", kwargs=dict(TILE=3))]))
    out = subprocess.run([sys.executable, "-c", code], env=dict(env, POWERATTN_TILES=str(bad)), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "POWERATTN_TILES" in out.stderr and "TILE" in out.stderr

"""Compile the Triton kernels for an H100 (sm_90) without a GPU and compare their machine code (SASS).

    python scripts/kernel_sass.py                   # per launch configuration: shared memory, SASS size, hash
    python scripts/kernel_sass.py --against HEAD    # ... and whether the SASS is identical at that revision

A refactor that should not change speed should not change the generated code either: this checks
it on any machine (Triton ships ``ptxas`` and ``cuobjdump``), at the launch configurations of the
H100 runs (Qwen2-7B attention shape at 32K: 28 query / 4 KV heads, head dim 128; the head-dim-64
forward tiles; fp32 for the tests' IEEE path; decode at 128K, host and device position). Pointers
and strides get the divisibility hints the real launches get. ``--against REV`` compiles
``kernels/`` as it is at git revision ``REV`` (read with ``git show``) beside the working tree.
Identical SASS means identical speed; the GPU re-run (notebook 08) remains the measurement.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
HQ, HKV, S, S_DECODE = 28, 4, 32768, 131072
FP32_ARGS = {"LSE", "DELTA", "DK", "DV", "OP", "LP"}
I32_ARGS = {"KV_IDX", "KV_CNT", "KV_FULL", "Q_LISTS", "ITEMS", "BLOCKS", "COUNTERS"}
# (name, kernel, dtype, head dim, constexprs, num_warps, num_stages)
CASES = [
    ("fwd bf16 d128 TMA", "fwd", "bf16", 128, dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=True), 8, 3),
    ("fwd bf16 d128 pointer", "fwd", "bf16", 128, dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=False), 8, 3),
    ("fwd bf16 d64 TMA (d64 tile)", "fwd", "bf16", 64, dict(BLOCK_M=128, BLOCK_N=64, USE_TMA=True), 4, 2),
    ("fwd bf16 d64 TMA (d128 tile)", "fwd", "bf16", 64, dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=True), 8, 3),
    ("fwd fp16 d64 pointer", "fwd", "fp16", 64, dict(BLOCK_M=128, BLOCK_N=64, USE_TMA=False), 4, 2),
    ("fwd bf16 d128 TMA warp-spec", "fwd", "bf16", 128, dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=True, WARP_SPEC=True), 8, 3),
    ("fwd bf16 d128 TMA 128x64 warp-spec", "fwd", "bf16", 128, dict(BLOCK_M=128, BLOCK_N=64, USE_TMA=True,
                                                                     WARP_SPEC=True), 4, 2),
    ("fwd bf16 d64 TMA (d64 tile) warp-spec", "fwd", "bf16", 64, dict(BLOCK_M=128, BLOCK_N=64, USE_TMA=True,
                                                                       WARP_SPEC=True), 4, 2),
    ("fwd fp32 d128 TMA", "fwd", "fp32", 128, dict(BLOCK_M=64, BLOCK_N=64, USE_TMA=True), 8, 3),
    ("dq bf16 d128 TMA", "dq", "bf16", 128, dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=True), 8, 2),
    ("dq bf16 d128 pointer", "dq", "bf16", 128, dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=False), 8, 2),
    ("dq bf16 d64 TMA", "dq", "bf16", 64, dict(BLOCK_M=128, BLOCK_N=128, USE_TMA=True), 8, 2),
    ("dq fp32 d128 TMA", "dq", "fp32", 128, dict(BLOCK_M=64, BLOCK_N=64, USE_TMA=True), 8, 2),
    ("dkdv bf16 d128 TMA", "dkdv", "bf16", 128, dict(BLOCK_M=64, BLOCK_N=64, USE_TMA=True), 4, 2),
    ("dkdv bf16 d128 pointer", "dkdv", "bf16", 128, dict(BLOCK_M=64, BLOCK_N=64, USE_TMA=False), 4, 2),
    ("dkdv bf16 d64 TMA", "dkdv", "bf16", 64, dict(BLOCK_M=64, BLOCK_N=64, USE_TMA=True), 4, 2),
    ("dkdv fp32 d128 TMA", "dkdv", "fp32", 128, dict(BLOCK_M=64, BLOCK_N=64, USE_TMA=True), 4, 2),
    ("decode bf16 d128", "decode", "bf16", 128, dict(BLOCK_N=64, BLOCK_H=16, POS_IN_MEMORY=False), 4, 3),
    ("decode bf16 d128 device position", "decode", "bf16", 128, dict(BLOCK_N=64, BLOCK_H=16, POS_IN_MEMORY=True), 4, 3),
    ("decode bf16 d64", "decode", "bf16", 64, dict(BLOCK_N=64, BLOCK_H=16, POS_IN_MEMORY=False), 4, 3),
    ("decode bf16 d128 fused", "decode", "bf16", 128, dict(BLOCK_N=64, BLOCK_H=16, POS_IN_MEMORY=False, FUSED=True,
                                                           SPLITS_P2=64), 4, 3),
    ("decode bf16 d64 fused", "decode", "bf16", 64, dict(BLOCK_N=64, BLOCK_H=16, POS_IN_MEMORY=False, FUSED=True,
                                                         SPLITS_P2=64), 4, 3),
    ("decode fp32 d128", "decode", "fp32", 128, dict(BLOCK_N=64, BLOCK_H=16, POS_IN_MEMORY=False), 4, 3),
]


def kernel_functions(package: str) -> dict:
    fwd = importlib.import_module(f"{package}.prefill_fwd")
    bwd = importlib.import_module(f"{package}.prefill_bwd")
    dec = importlib.import_module(f"{package}.decode")
    return {"fwd": fwd._fwd_kernel, "dq": bwd._bwd_dq_kernel, "dkdv": bwd._bwd_dkdv_kernel,
            "decode": dec._decode_split_kernel}


def arg_values(kernel: str, head_dim: int) -> dict:
    """Integer arguments of one launch (the values decide Triton's divisibility-by-16 specialisation)."""
    q_len, seq = (1, S_DECODE) if kernel == "decode" else (S, S)
    q = dict(b=HQ * q_len * head_dim, h=q_len * head_dim, s=head_dim)
    kv = dict(b=HKV * seq * head_dim, h=seq * head_dim, s=head_dim)
    vals = dict(H_Q=HQ, H_KV=HKV, GROUP=HQ // HKV, S=seq, T=1, U=12, NUM_SPLITS=48, s_idx=23)
    for prefix, strides in (("q", q), ("o", q), ("d", q), ("k", kv), ("v", kv)):
        vals.update({f"s_{prefix}{axis}": value for axis, value in strides.items()})
    return vals


def compile_case(fn, kernel, dtype, head_dim, constexprs, num_warps, num_stages):
    consts = dict(constexprs, HEAD_DIM=head_dim, BLOCK_SIZE=256)
    for flag, off in (("WARP_SPEC", False), ("FUSED", False), ("SPLITS_P2", 2)):  # issue 11's constexprs
        if flag in fn.arg_names:
            consts.setdefault(flag, off)
    precision = "ieee" if dtype == "fp32" else "tf32"
    consts.update(PRECISION=precision) if "PRECISION" in fn.arg_names else consts.update(IEEE=dtype == "fp32")
    values = arg_values(kernel, head_dim)
    signature, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            signature[name] = "constexpr"
        elif name in values:
            if values[name] == 1:  # Triton specialises an integer equal to 1 into a constant
                signature[name], consts[name] = "constexpr", 1
                continue
            signature[name] = "i32"
            if values[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif name.isupper():  # a pointer (torch allocations are 16-byte aligned)
            signature[name] = ("*fp32" if name in FP32_ARGS else "*i32" if name in I32_ARGS else
                               "*i8" if name == "ALLOWED" else "*i64" if name == "POS" else f"*{dtype}")
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "fp32"  # qk_scale, sm_scale
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts, attrs=attrs)
    options = triton.compiler.make_backend(TARGET).parse_options(dict(num_warps=num_warps, num_stages=num_stages))
    return triton.compile(src, target=TARGET, options=options.__dict__)


def sass(compiled) -> list[str]:
    """The instructions of the kernel's SASS (addresses and encodings dropped)."""
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([str(cuobjdump), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    return [m.group(1) for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(.*?);", text)]


def package_at(rev: str, tmp: Path) -> str:
    """Write ``kernels/*.py`` as of git revision ``rev`` into ``tmp/kernels_at_rev``; returns the package name."""
    names = subprocess.run(["git", "ls-tree", "--name-only", rev, "kernels/"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    pkg = tmp / "kernels_at_rev"
    pkg.mkdir()
    for name in names:
        if name.endswith(".py"):
            text = subprocess.run(["git", "show", f"{rev}:{name}"], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout
            (pkg / Path(name).name).write_text(text)
    sys.path.insert(0, str(tmp))
    return pkg.name


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", metavar="REV", help="git revision to compare with (e.g. HEAD)")
    p.add_argument("--only", default="", help="run the cases whose name contains this text")
    a = p.parse_args(argv)
    print(f"triton {triton.__version__}, target sm_90", flush=True)
    ours = kernel_functions("kernels")
    with tempfile.TemporaryDirectory() as tmp:
        theirs = kernel_functions(package_at(a.against, Path(tmp))) if a.against else None
        for name, kernel, dtype, head_dim, constexprs, warps, stages in CASES:
            if a.only not in name:
                continue
            new = compile_case(ours[kernel], kernel, dtype, head_dim, constexprs, warps, stages)
            code = sass(new)
            line = (f"{name:34s} shared {new.metadata.shared:6d} B  {len(code):6d} instructions  "
                    f"sha1 {hashlib.sha1(chr(10).join(code).encode()).hexdigest()[:12]}")
            if theirs is not None and not set(constexprs) <= set(theirs[kernel].arg_names):
                line += f"  (setting not at {a.against})"
            elif theirs is not None:
                old = sass(compile_case(theirs[kernel], kernel, dtype, head_dim, constexprs, warps, stages))
                line += "  IDENTICAL" if old == code else f"  differs ({len(old)} instructions at {a.against})"
            print(line, flush=True)


if __name__ == "__main__":
    main()

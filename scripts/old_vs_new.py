"""Forward of the refactored kernels against the last landed commit's (17eb2ef), side by side in one process.

The old package is carried as ``.gpu/old/kernels_old`` (``git show 17eb2ef:kernels/<file>``). Shapes: Qwen2-7B
attention (28/4 heads, head dim 128, 256-token blocks) and SmolLM2 (9/3 heads, head dim 64) with 64- and
256-token blocks; bf16; PowerAttention and sliding window at the paper's configs. Each case is timed twice in
alternation (old, new, old, new) with triton.testing.do_bench (median), and the two outputs are compared.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".gpu" / "old"))
import kernels  # noqa: E402
import kernels_old  # noqa: E402
from lib import masks  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = []
    g = torch.Generator(device="cuda").manual_seed(0)
    cases = [(28, 4, 128, 256, S) for S in (32768, 131072)] + [(9, 3, 64, bs, S) for bs in (64, 256) for S in (32768, 131072)]
    for hq, hkv, d, bs, S in cases:
        q = torch.randn(1, hq, S, d, device="cuda", dtype=torch.bfloat16, generator=g)
        k = torch.randn(1, hkv, S, d, device="cuda", dtype=torch.bfloat16, generator=g)
        v = torch.randn(1, hkv, S, d, device="cuda", dtype=torch.bfloat16, generator=g)
        for p in ("power", "sliding_window"):
            cfg = masks.section41_config(p, math.ceil(S / bs))
            with torch.no_grad():
                f_old = lambda: kernels_old.sparse_attention(q, k, v, p, bs, backend="triton", **cfg)  # noqa: E731
                f_new = lambda: kernels.sparse_attention(q, k, v, p, bs, backend="triton", **cfg)  # noqa: E731
                o_old, o_new = f_old(), f_new()
                err = float((o_old.float() - o_new.float()).norm() / o_old.float().norm())
                t = {"old": [], "new": []}
                for _ in range(2):
                    t["old"].append(do_bench(f_old, warmup=25, rep=200, return_mode="median"))
                    t["new"].append(do_bench(f_new, warmup=25, rep=200, return_mode="median"))
            old, new = min(t["old"]), min(t["new"])
            rows.append(dict(heads=f"{hq}/{hkv}", head_dim=d, block=bs, S=S, pattern=p, old_ms=old, new_ms=new,
                             new_over_old=new / old, runs=t, rel_diff=err))
            print(f"{hq}/{hkv} d{d} bs{bs} {S // 1024}K {p:>14}: old {old:.3f} ms, new {new:.3f} ms "
                  f"({new / old:.3f}x), outputs differ by {err:.1e}", flush=True)
        del q, k, v
        torch.cuda.empty_cache()
    Path(a.out).write_text(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                                           rows=rows), indent=1))


if __name__ == "__main__":
    main()

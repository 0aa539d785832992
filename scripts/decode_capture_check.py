"""CUDA-graph capture of the position-independent decode path (what notebook 09's decode loop captures).

    python scripts/decode_capture_check.py

For each sparse pattern: one eager warm-up step (builds the layout's device tables), a capture of
``lib.hf_attention._step_blocks`` + ``kernels.decode.decode_at_position`` reading the position from a device
tensor, then replays at several positions compared with the eager call at the same position. Prints one line
per pattern and exits non-zero on a failed capture or a mismatch. (Notebook 09's power decode failed to capture
while ``BlockLayout.decode_rows`` indexed with a 0-dim tensor, a host read.)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from kernels.benchmark import capture_graph  # noqa: E402
from kernels.decode import decode_at_position  # noqa: E402
from lib import masks  # noqa: E402
from lib.hf_attention import _step_blocks  # noqa: E402


def main() -> int:
    S, bs, Hq, Hkv, D = 32768, 256, 28, 4, 128
    g = torch.Generator(device="cuda").manual_seed(0)
    k = torch.randn(1, Hkv, S, D, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn_like(k)
    q = torch.randn(1, Hq, 1, D, device="cuda", dtype=torch.bfloat16, generator=g)
    bad = 0
    for pattern in [p for p in masks.PATTERNS if p != "full"]:
        cfg = masks.section41_config(pattern, S // bs)
        pos = torch.full((1, 1), 1000, device="cuda", dtype=torch.long)

        def step():
            blk, valid = _step_blocks(pos, pos.reshape(-1)[:1], S, pattern, bs, cfg)
            return decode_at_position(q, k, v, blk, valid, pos.reshape(-1)[:1], bs)

        try:
            graph, out = capture_graph(step)
            worst = 0.0
            for p in (5, 300, 4096, 20000, S - 1):
                pos.fill_(p)
                graph.replay()
                pos.add_(0)  # a fresh version: the eager call recomputes its key blocks
                ref = step()
                worst = max(worst, float((out.float() - ref.float()).abs().max()))
            ok = worst == 0.0
            print(f"{pattern:15s} captured, replays vs eager max |diff| {worst:.3g} {'OK' if ok else 'MISMATCH'}")
        except Exception as e:  # noqa: BLE001
            ok = False
            print(f"{pattern:15s} FAILED: {type(e).__name__}: {str(e)[:200]}")
        bad += not ok
        torch.cuda.synchronize()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

"""Time the Triton selective scan (forward, forward + backward) at one layer's shape for several tiles.

    PYTHONPATH=src python3 benchmarks/tune_selective_scan.py --out $OUT [--batch 4 --length 512 --channels 5120]

Each tile is (CHUNK positions, BLOCK_D channels, warps), set through PHASELM_SCAN_TILE; the
default tile of ops/selective_scan.py is timed as "default". Prints a table (median ms over
do_bench's repetitions) with the bytes each direction must move at least and the bandwidth
that implies, and writes tune_selective_scan.json. Inputs are bf16 as in the 2.8B model.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from phaselm.ops.selective_scan import selective_scan_triton

TILES = ["default", "16,64,4", "16,16,2", "8,32,4", "32,32,4", "16,32,8", "16,64,8", "16,128,8"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/tune-scan")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--channels", type=int, default=5120)
    parser.add_argument("--state", type=int, default=16)
    parser.add_argument(
        "--tiles", default=" ".join(TILES), help="space-separated tiles: 'default' or chunk,block_d,warps"
    )
    args = parser.parse_args()
    import triton.testing

    torch.manual_seed(0)
    b, t, d, n = args.batch, args.length, args.channels, args.state
    dev = "cuda"
    x, dt, z = (torch.randn(b, t, d, device=dev, dtype=torch.bfloat16) for _ in range(3))
    dt = dt - 2
    A = -torch.rand(d, n, device=dev) * 4
    B, C = (torch.randn(b, t, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    D, bias = torch.randn(d, device=dev), torch.randn(d, device=dev) * 0.1
    leaves = [v.requires_grad_() for v in (x, dt, A, B, C, D, z, bias)]
    grad = torch.randn(b, t, d, device=dev, dtype=torch.bfloat16)
    # Least traffic: read x, dt, z (bf16) and B, C; write y. Backward reads those and dy, writes dx, ddt, dz.
    fwd_bytes = 2 * (4 * b * t * d + 2 * b * t * n)
    bwd_bytes = 2 * (7 * b * t * d + 4 * b * t * n)
    rows = []
    for tile in args.tiles.split():
        if tile == "default":
            os.environ.pop("PHASELM_SCAN_TILE", None)
        else:
            os.environ["PHASELM_SCAN_TILE"] = tile
        try:
            fwd = triton.testing.do_bench(
                lambda: selective_scan_triton(*leaves[:5], D, z, bias), warmup=50, rep=200, return_mode="median"
            )

            def both():
                out, _ = selective_scan_triton(*leaves[:5], leaves[5], leaves[6], leaves[7])
                torch.autograd.grad(out, leaves, grad)

            total = triton.testing.do_bench(both, warmup=50, rep=300, return_mode="median")
            rows.append(
                {
                    "tile": tile,
                    "forward_ms": fwd,
                    "forward_backward_ms": total,
                    "forward_gb_s": fwd_bytes / fwd / 1e6,
                    "backward_gb_s": bwd_bytes / max(total - fwd, 1e-6) / 1e6,
                }
            )
        except Exception as exc:  # a tile that does not compile (registers, shared memory) is reported, not fatal
            rows.append({"tile": tile, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"})
        print(rows[-1], flush=True)
    os.environ.pop("PHASELM_SCAN_TILE", None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name(),
        "shape": {"batch": b, "length": t, "channels": d, "state": n},
        "rows": rows,
    }
    (out / "tune_selective_scan.json").write_text(json.dumps(report, indent=2))
    print(f"\nselective scan, {b} × {t} × {d} channels × {n} states, bf16 in, {report['device']}")
    print("| tile (chunk, block_d, warps) | forward ms | fwd+bwd ms | forward GB/s (least bytes) | backward GB/s |")
    print("|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['tile']} | {r['error']} | | | |")
        else:
            print(
                f"| {r['tile']} | {r['forward_ms']:.3f} | {r['forward_backward_ms']:.3f} | "
                f"{r['forward_gb_s']:.0f} | {r['backward_gb_s']:.0f} |"
            )


if __name__ == "__main__":
    main()

"""Check every fast path against its reference on the GPU: forward and gradients, max relative error.

    PYTHONPATH=src python3 benchmarks/check_fast_paths.py [--out DIR]

- RWKV-6: fla's ``chunk_rwkv6`` (when fla imports) and our chunked path vs the sequential
  reference, float32 inputs at a fusion-recipe shape.
- Mamba-2 / K-SSM SSD: our chunked scan and the fused Triton kernels vs the sequential reference.
- Kuramoto harmonics: the fused Triton kernel vs the direct form, at the K-SSM bank's shape.

Errors are max |fast − reference| / max |reference| per output (forward) and per input gradient
(backward, for one random cotangent). Writes fast_paths.json to --out and prints a table. Runs
on CPU too (fla and the compiled kernels are then skipped), but the point is the GPU.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from phaselm.ops import harmonics as harmonics_ops
from phaselm.ops import ssd as ssd_ops
from phaselm.ops.rwkv6 import fla_available, rwkv6, rwkv6_reference
from phaselm.ops.ssd import ssd_chunked, ssd_reference


def relative_errors(fast_fn, reference_fn, inputs: list[torch.Tensor]) -> dict:
    """Max relative error of the outputs and of each input's gradient (one shared cotangent)."""
    results = {}
    outs = {}
    grads = {}
    for name, fn in (("fast", fast_fn), ("reference", reference_fn)):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out = out if isinstance(out, tuple) else (out,)
        torch.manual_seed(1)
        cotangents = [torch.randn_like(o) for o in out]
        sum((o * c).sum() for o, c in zip(out, cotangents)).backward()
        outs[name] = [o.detach().float() for o in out]
        grads[name] = [leaf.grad.detach().float() if leaf.grad is not None else None for leaf in leaves]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    results["forward"] = [rel(a, b) for a, b in zip(outs["fast"], outs["reference"])]
    results["backward"] = [rel(a, b) if a is not None and b is not None else None for a, b in zip(grads["fast"], grads["reference"])]
    return results


def rwkv6_inputs(device, batch=2, length=512, heads=3, dim=64):
    g = torch.Generator(device="cpu").manual_seed(0)
    r, k = (torch.randn(batch, length, heads, dim, generator=g) * 0.5 for _ in range(2))
    v = torch.randn(batch, length, heads, dim, generator=g)
    w = -torch.exp(torch.randn(batch, length, heads, dim, generator=g) * 0.5 - 1.0)  # log decays < 0
    u = torch.randn(heads, dim, generator=g) * 0.5
    return [t.to(device) for t in (r, k, v, w, u)]


def ssd_inputs(device, batch=2, length=512, heads=6, p=64, n=64):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, length, heads, p, generator=g) * 0.1
    a = -torch.rand(batch, length, heads, generator=g) * 0.5
    b, c = (torch.randn(batch, length, heads, n, generator=g) for _ in range(2))
    return [t.to(device) for t in (x, a, b, c)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/fast-paths")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "checks": {}}

    x = rwkv6_inputs(device)
    reference = lambda *t: rwkv6_reference(*t)[0]  # noqa: E731
    report["checks"]["rwkv6 chunked vs reference"] = relative_errors(lambda *t: rwkv6(*t, backend="chunked")[0], reference, x)
    if device == "cuda" and fla_available():
        report["checks"]["rwkv6 fla chunk_rwkv6 vs reference"] = relative_errors(lambda *t: rwkv6(*t, backend="fla")[0], reference, x)
    else:
        report["checks"]["rwkv6 fla chunk_rwkv6 vs reference"] = "skipped: fla not importable or no CUDA device"

    s = ssd_inputs(device)
    report["checks"]["ssd chunked vs reference"] = relative_errors(lambda *t: ssd_chunked(*t)[0], lambda *t: ssd_reference(*t)[0], s)
    if ssd_ops.fused_available(s[0]):
        report["checks"]["ssd fused vs reference"] = relative_errors(lambda *t: ssd_ops.ssd_fused(*t)[0], lambda *t: ssd_reference(*t)[0], s)
    else:
        report["checks"]["ssd fused vs reference"] = "skipped: no CUDA device (the CPU tests run it in Triton's interpreter)"

    theta = (torch.rand(64, 256, 192, device=device) - 0.5) * 8
    if harmonics_ops.fused_available(theta):
        report["checks"]["harmonics fused vs direct"] = relative_errors(
            lambda t: harmonics_ops.harmonics_fused(t, 32), lambda t: harmonics_ops.harmonics_reference(t, 32), [theta]
        )
    else:
        report["checks"]["harmonics fused vs direct"] = "skipped: no CUDA device (the CPU tests run it in Triton's interpreter)"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fast_paths.json").write_text(json.dumps(report, indent=2))
    print(f"device: {report['device']}")
    for name, result in report["checks"].items():
        if isinstance(result, str):
            print(f"{name:40s} {result}")
            continue
        fwd = max(result["forward"])
        bwd = max(e for e in result["backward"] if e is not None)
        print(f"{name:40s} forward max rel err {fwd:.2e}   backward max rel err {bwd:.2e}")


if __name__ == "__main__":
    main()

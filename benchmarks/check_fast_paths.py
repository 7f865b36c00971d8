"""Check every fast path against its reference on the GPU: forward and gradients, max relative error.

    PYTHONPATH=src python3 benchmarks/check_fast_paths.py [--out DIR]

- RWKV-6: fla's ``chunk_rwkv6`` (when fla imports) and our chunked path vs the sequential
  reference, float32 inputs at a fusion-recipe shape; our Triton kernels vs the reference at
  several shapes (ragged lengths, with an initial state, float32 and bf16 inputs), their
  first-call time, and their steady-state forward + backward time against the chunked path at a
  GPT-2-small-shaped RWKV-6 (16 × 512, 12 heads of 64).
- Mamba-2 / K-SSM SSD: our chunked scan and the fused Triton kernels vs the sequential reference.
- Kuramoto harmonics: the fused Triton kernel vs the direct form, at the K-SSM bank's shape.
- Mamba-1 (Phase-Mamba's backbone): the Triton selective scan and causal conv1d vs their
  references at a 2.8B layer's width, ragged lengths (not multiples of the chunk), float32 and
  bf16 inputs; the decoding step kernels; and a Hugging Face Mamba routed to our kernels vs
  transformers' own path (logits and every parameter's gradient).
- Phase Core dynamics: the fused Kuramoto kernels (token and recurrent mode, with a padding
  mask) vs the PyTorch loop.

``--only mamba`` runs the Mamba-1 and Phase Core checks alone; ``--only rwkv6`` the RWKV-6
Triton checks and timings alone (run it in a fresh process: the first-call time is only
meaningful before anything else has compiled the kernels).

Errors are max |fast − reference| / max |reference| per output (forward) and per input gradient
(backward, for one random cotangent). Writes fast_paths.json to --out and prints a table. Runs
on CPU too (fla and the compiled kernels are then skipped), but the point is the GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from phaselm.ops import causal_conv1d as conv_ops
from phaselm.ops import harmonics as harmonics_ops
from phaselm.ops import kuramoto as kuramoto_ops
from phaselm.ops import selective_scan as scan_ops
from phaselm.ops import ssd as ssd_ops
from phaselm.ops.backend import triton_runs_on
from phaselm.ops.rwkv6 import fla_available, rwkv6, rwkv6_chunked, rwkv6_reference
from phaselm.ops.rwkv6_triton import rwkv6_triton
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
        # torch.randn, not randn_like: randn_like fills in memory order, so a non-contiguous output
        # (chunked SSD's) would get a differently placed cotangent than the reference's.
        cotangents = [torch.randn(o.shape, dtype=o.dtype, device=o.device) for o in out]
        sum((o * c).sum() for o, c in zip(out, cotangents)).backward()
        outs[name] = [o.detach().float() for o in out]
        grads[name] = [leaf.grad.detach().float() if leaf.grad is not None else None for leaf in leaves]

    def rel(a, b):
        return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))

    results["forward"] = [rel(a, b) for a, b in zip(outs["fast"], outs["reference"])]
    results["backward"] = [
        rel(a, b) if a is not None and b is not None else None for a, b in zip(grads["fast"], grads["reference"])
    ]
    return results


def rwkv6_inputs(device, batch=2, length=512, heads=3, dim=64):
    g = torch.Generator(device="cpu").manual_seed(0)
    r, k = (torch.randn(batch, length, heads, dim, generator=g) * 0.5 for _ in range(2))
    v = torch.randn(batch, length, heads, dim, generator=g)
    w = -torch.exp(torch.randn(batch, length, heads, dim, generator=g) * 0.5 - 1.0)  # log decays < 0
    u = torch.randn(heads, dim, generator=g) * 0.5
    return [t.to(device) for t in (r, k, v, w, u)]


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def rms_ratio(a: torch.Tensor, b: torch.Tensor) -> float:
    """fla's test measure: RMS of the difference over RMS of the reference."""
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30))


# fla's tests accept an RMS error ratio of about 5e-3 for its kernels (bf16 products); float32
# inputs run IEEE float32 products here, so they are held 50× tighter.
RWKV6_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-3}


def rwkv6_case(device, dtype, batch, length, heads, dim=64, seed=0):
    """r, k, v, w (B, T, H, 64) in ``dtype``; u (H, 64) and an initial state (B, H, 64, 64) in float32."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    r, k = (torch.randn(batch, length, heads, dim, generator=g) * 0.5 for _ in range(2))
    v = torch.randn(batch, length, heads, dim, generator=g)
    # RWKV-6's w = −exp(·): per-step decays from ~0.99 down to ~0.05, a spread like a trained model's.
    w = -torch.exp(torch.randn(batch, length, heads, dim, generator=g) - 1.5)
    u = torch.randn(heads, dim, generator=g) * 0.5
    s0 = torch.randn(batch, heads, dim, dim, generator=g) * 0.1
    return [t.to(device, dtype) for t in (r, k, v, w)] + [u.to(device), s0.to(device)]


def rwkv6_accuracy(device: str, checks: dict) -> None:
    """Triton vs the sequential reference (float32, from the same rounded inputs): y, the final
    state, and the gradients of r, k, v, w, u and the initial state, as max relative error and as
    fla's RMS ratio with a pass/fail."""
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        for length, heads in ((64, 4), (255, 8), (1024, 4)):
            x = rwkv6_case(device, dtype, 2, length, heads)
            outs, grads = {}, {}
            for which, fn in (
                ("triton", rwkv6_triton),
                ("reference", lambda *t: rwkv6_reference(*(a.float() for a in t))),
            ):
                leaves = [t.detach().clone().requires_grad_() for t in x]
                y, state = fn(*leaves)
                torch.manual_seed(1)
                # Cotangents representable in the input dtype: the kernel receives dy in y's dtype,
                # and a reference given finer ones would charge that rounding to the kernel.
                (y.float() * torch.randn_like(y, dtype=torch.float32).to(dtype).float()).sum().backward(
                    retain_graph=True
                )
                (state.float() * torch.randn_like(state, dtype=torch.float32)).sum().backward()
                outs[which] = [y.detach().float(), state.detach().float()]
                grads[which] = [leaf.grad.float() for leaf in leaves]
            pairs = list(zip(outs["triton"] + grads["triton"], outs["reference"] + grads["reference"]))
            ratios = {
                n: rms_ratio(a, b)
                for n, (a, b) in zip(("y", "final_state", "dr", "dk", "dv", "dw", "du", "d_initial"), pairs)
            }
            checks[f"rwkv6 triton vs reference ({name}, 2 x {length} x {heads} x 64, initial state)"] = {
                "forward": [max_relative(a, b) for a, b in pairs[:2]],
                "backward": [max_relative(a, b) for a, b in pairs[2:]],
                "rms_ratio": ratios,
                "pass": all(v <= RWKV6_TOLERANCE[dtype] for v in ratios.values()),
            }


def _fwd_bwd(fn, x):
    # bf16 inputs run under autocast, as in a bf16 training step: the chunked path mixes its
    # float32 state with bf16 products only there; the Triton op computes in float32 either way.
    low = x[0].dtype != torch.float32
    with torch.autocast("cuda", dtype=x[0].dtype, enabled=low):
        y, state = fn(*x)
    (y.float().sum() + state.float().sum()).backward()


def rwkv6_timing(device: str, report: dict) -> None:
    """First call (compilation included: an empty Triton cache) and steady-state ms, triton vs chunked."""
    shape = {"batch": 16, "length": 512, "heads": 12}
    timings = report.setdefault("timings", {})
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton-cache-")  # a cold compile, as on a fresh machine
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        x = [t.requires_grad_() for t in rwkv6_case(device, dtype, **shape)]
        for label, fn in (("triton", rwkv6_triton), ("chunked", rwkv6_chunked)):
            torch.cuda.synchronize()
            start = time.perf_counter()
            _fwd_bwd(fn, x)
            torch.cuda.synchronize()
            first = time.perf_counter() - start
            for _ in range(3):
                _fwd_bwd(fn, x)
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(20):
                _fwd_bwd(fn, x)
            end.record()
            torch.cuda.synchronize()
            timings[f"rwkv6 {label} fwd+bwd ({name}, 16 x 512 x 12 x 64)"] = {
                "first_call_s": first, "steady_ms": begin.elapsed_time(end) / 20,
            }
    # A new length must not compile anything (nothing is keyed on T): time a first call at T = 700.
    x = [t.requires_grad_() for t in rwkv6_case(device, torch.bfloat16, 16, 700, 12)]
    torch.cuda.synchronize()
    start = time.perf_counter()
    _fwd_bwd(rwkv6_triton, x)
    torch.cuda.synchronize()
    timings["rwkv6 triton first call at a new length (bf16, T = 700)"] = {"first_call_s": time.perf_counter() - start}


def rwkv6_checks(device: str, report: dict) -> None:
    if device != "cuda":
        report["checks"]["rwkv6 triton vs reference"] = (
            "skipped: no CUDA device (the CPU tests run it in Triton's interpreter)"
        )
        return
    rwkv6_timing(device, report)  # first: the first-call time needs kernels nothing has compiled yet
    rwkv6_accuracy(device, report["checks"])


def ssd_inputs(device, batch=2, length=512, heads=6, p=64, n=64):
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, length, heads, p, generator=g) * 0.1
    a = -torch.rand(batch, length, heads, generator=g) * 0.5
    b, c = (torch.randn(batch, length, heads, n, generator=g) for _ in range(2))
    return [t.to(device) for t in (x, a, b, c)]


def scan_inputs(device, dtype, batch=2, length=549, channels=5120, n=16):
    """A 2.8B layer's scan: 5,120 channels, 16 states; 549 = 34 chunks of 16 + 5 (ragged)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    x, z = (torch.randn(batch, length, channels, generator=g) for _ in range(2))
    dt = torch.randn(batch, length, channels, generator=g) - 2.0
    A = -torch.exp(torch.randn(channels, n, generator=g) * 0.5)
    B, C = (torch.randn(batch, length, n, generator=g) for _ in range(2))
    D, bias = torch.randn(channels, generator=g), torch.randn(channels, generator=g) * 0.1
    state = torch.randn(batch, channels, n, generator=g) * 0.1
    low = [t.to(device, dtype) for t in (x, dt)] + [A.to(device)] + [t.to(device, dtype) for t in (B, C)]
    return low + [D.to(device), z.to(device, dtype), bias.to(device), state.to(device)]


def mamba_checks(device: str, report: dict) -> None:
    checks = report["checks"]
    if not triton_runs_on(device) or device != "cuda":
        checks["selective scan triton vs reference"] = (
            "skipped: no CUDA device (the CPU tests run it in Triton's interpreter)"
        )
        return
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).replace("torch.", "")
        s = scan_inputs(device, dtype)
        # The reference computes in float32 from the same (rounded) inputs: both see identical data.
        checks[f"selective scan triton vs reference ({name}, 2 x 549 x 5120)"] = relative_errors(
            lambda *t: scan_ops.selective_scan_triton(*t[:8], initial_state=t[8]),
            lambda *t: scan_ops.selective_scan_reference(*t[:8], initial_state=t[8]), s
        )
        xconv = s[0][..., :1024]
        w, b = torch.randn(1024, 4, device=device) * 0.5, torch.randn(1024, device=device)
        checks[f"causal conv1d triton vs reference ({name})"] = relative_errors(
            lambda *t: conv_ops.causal_conv1d(*t, backend="triton"),
            lambda *t: conv_ops.causal_conv1d_reference(*t),
            [xconv, w, b],
        )
    # Decoding steps: one position from a random state, kernels vs references.
    s = scan_inputs(device, torch.float32, length=1)
    state_a, state_b = s[-1].clone(), s[-1].clone()
    fast = scan_ops.selective_state_step(
        state_a, s[0][:, 0], s[1][:, 0], s[2], s[3][:, 0], s[4][:, 0], s[5], s[6][:, 0], s[7], backend="triton"
    )
    ref = scan_ops.selective_state_step_reference(
        state_b, s[0][:, 0], s[1][:, 0], s[2], s[3][:, 0], s[4][:, 0], s[5], s[6][:, 0], s[7]
    )
    rel = lambda a, b: float((a - b).abs().max() / b.abs().max())  # noqa: E731
    checks["selective state step triton vs reference"] = {
        "forward": [rel(fast, ref), rel(state_a, state_b)],
        "backward": [],
    }
    window = torch.randn(2, 1024, 4, device=device)
    w, b = torch.randn(1024, 4, device=device), torch.randn(1024, device=device)
    xs = torch.randn(2, 1024, device=device)
    wa, wb = window.clone(), window.clone()
    fast = conv_ops.causal_conv1d_step(xs, wa, w, b, backend="triton")
    ref = conv_ops.causal_conv1d_step(xs, wb, w, b, backend="reference")
    checks["causal conv1d step triton vs reference"] = {"forward": [rel(fast, ref), rel(wa, wb)], "backward": []}

    # The Mamba block's RMSNorm (inference only), bf16 weights as in the 2.8B model: roundings as transformers'.
    from phaselm.ops import rms_norm as norm_ops

    xs, ws = torch.randn(2048, 2560, device=device) * 3, torch.randn(2560, device=device).bfloat16()
    fast = norm_ops.rms_norm(xs, ws, 1e-5, backend="triton").float()
    ref = norm_ops.rms_norm_reference(xs, ws, 1e-5).float()
    checks["rms norm triton vs transformers' arithmetic (bf16)"] = {
        "forward": [rel(fast, ref), float((fast != ref).float().mean())],
        "backward": [],
    }

    # Phase Core dynamics at the seed's shape: 4 × 512 positions, 16 oscillators, 8 Euler steps.
    kick = torch.randn(4, 512, 16, device=device) * 2
    omega, k = torch.randn(16, device=device), torch.tensor(2.0, device=device)
    checks["kuramoto integrate (token mode) triton vs reference"] = relative_errors(
        lambda t, o, kk: kuramoto_ops.kuramoto_integrate(t, o, kk, 0.1, 8, backend="triton"),
        lambda t, o, kk: kuramoto_ops.kuramoto_integrate(t, o, kk, 0.1, 8, backend="reference"), [kick, omega, k],
    )
    # The recurrent dynamics are chaotic at K = 2: over a few hundred positions float32 rounding
    # alone moves the phases by O(1) (the float32 loop against a float64 one: 6e-3 after 128
    # positions, 0.5 after 256, in Triton's interpreter too), so kernel and loop are compared
    # over 64 positions, where both sit at float32 rounding.
    kick, mask = kick[:, :64], torch.ones(4, 64, device=device)
    mask[0, :20] = 0  # left padding
    checks["kuramoto recurrent triton vs reference (4 x 64, masked)"] = relative_errors(
        lambda t, o, kk: kuramoto_ops.kuramoto_recurrent(t, o, kk, 0.1, 8, mask=mask, backend="triton"),
        lambda t, o, kk: kuramoto_ops.kuramoto_recurrent(t, o, kk, 0.1, 8, mask=mask, backend="reference"),
        [kick, omega, k],
    )

    # A Hugging Face Mamba at full width, 2 layers, float32: routed vs transformers' own path.
    from transformers import MambaConfig, MambaForCausalLM

    from phaselm.fast_mamba import fast_mamba

    config = MambaConfig(vocab_size=1000, hidden_size=2560, num_hidden_layers=2, state_size=16, expand=2, conv_kernel=4)
    torch.manual_seed(0)
    reference = MambaForCausalLM(config).to(device)
    fast = MambaForCausalLM(config).to(device)
    fast.load_state_dict(reference.state_dict())
    fast_mamba(fast, "triton")
    ids = torch.randint(0, 1000, (2, 133), device=device)
    logits, grads = [], []
    for model in (reference, fast):
        model.train()
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        logits.append(out.logits.detach())
        grads.append([p.grad for p in model.parameters()])
    checks["HF Mamba (2 x 2560, 2 layers) routed vs transformers"] = {
        "forward": [rel(logits[1], logits[0])],
        "backward": [rel(a, b) for a, b in zip(grads[1], grads[0]) if b is not None and b.abs().max() > 0],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/fast-paths")
    parser.add_argument("--only", choices=["all", "mamba", "rwkv6"], default="all")
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "checks": {}}
    if args.only == "mamba":
        mamba_checks(device, report)
        return finish(report, args.out)
    if args.only == "rwkv6":
        rwkv6_checks(device, report)
        return finish(report, args.out)

    rwkv6_checks(device, report)
    x = rwkv6_inputs(device)
    reference = lambda *t: rwkv6_reference(*t)[0]  # noqa: E731
    report["checks"]["rwkv6 chunked vs reference"] = relative_errors(
        lambda *t: rwkv6(*t, backend="chunked")[0], reference, x
    )
    if device == "cuda" and fla_available():
        report["checks"]["rwkv6 fla chunk_rwkv6 vs reference"] = relative_errors(
            lambda *t: rwkv6(*t, backend="fla")[0], reference, x
        )
    else:
        report["checks"]["rwkv6 fla chunk_rwkv6 vs reference"] = "skipped: fla not importable or no CUDA device"

    s = ssd_inputs(device)
    report["checks"]["ssd chunked vs reference"] = relative_errors(
        lambda *t: ssd_chunked(*t)[0], lambda *t: ssd_reference(*t)[0], s
    )
    if triton_runs_on(s[0].device):
        report["checks"]["ssd fused vs reference"] = relative_errors(
            lambda *t: ssd_ops.ssd_fused(*t)[0], lambda *t: ssd_reference(*t)[0], s
        )
    else:
        report["checks"]["ssd fused vs reference"] = (
            "skipped: no CUDA device (the CPU tests run it in Triton's interpreter)"
        )

    theta = (torch.rand(64, 256, 192, device=device) - 0.5) * 8
    if triton_runs_on(theta.device):
        report["checks"]["harmonics fused vs direct"] = relative_errors(
            lambda t: harmonics_ops.harmonics_fused(t, 32), lambda t: harmonics_ops.harmonics_reference(t, 32), [theta]
        )
    else:
        report["checks"]["harmonics fused vs direct"] = (
            "skipped: no CUDA device (the CPU tests run it in Triton's interpreter)"
        )

    mamba_checks(device, report)
    finish(report, args.out)


def finish(report: dict, out: str) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fast_paths.json").write_text(json.dumps(report, indent=2))
    print(f"device: {report['device']}")
    for name, result in report["checks"].items():
        if isinstance(result, str):
            print(f"{name:40s} {result}")
            continue
        fwd = max(result["forward"])
        backward = [e for e in result["backward"] if e is not None]
        bwd = f"{max(backward):.2e}" if backward else "—"
        verdict = (
            ""
            if "pass" not in result
            else f"   rms ratio max {max(result['rms_ratio'].values()):.2e} {'pass' if result['pass'] else 'FAIL'}"
        )
        print(f"{name:55s} forward max rel err {fwd:.2e}   backward max rel err {bwd}{verdict}")
    for name, timing in report.get("timings", {}).items():
        print(f"{name:55s} " + "   ".join(f"{key} {value:.4g}" for key, value in timing.items()))


if __name__ == "__main__":
    main()

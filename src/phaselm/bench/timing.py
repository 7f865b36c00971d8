"""Timing on one device, and the device's own ceilings (matrix rate, memory bandwidth).

Device work is asynchronous, so every timed region synchronises before reading the clock; the
median over timed repetitions after warm-up is what the benches report. The ceilings are
measured on the machine (METHOD: datasheet rates are leads), so a figure and its floor come
from one run on one card.
"""

from __future__ import annotations

import statistics
import time

import torch


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device):
    """bf16 autocast on CUDA (what training does), nothing on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def median_seconds(fn, steps: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def matmul_tflops(device: torch.device, size: int = 8192, repeats: int = 10) -> float | None:
    """Measured bf16 matrix-product rate (TFLOP/s) on random data; None on a CPU."""
    if device.type != "cuda":
        return None
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    seconds = median_seconds(lambda: a @ b, repeats, 3, device)
    return 2 * size**3 / seconds / 1e12


def copy_bandwidth(device: torch.device, gib: float = 2.0, repeats: int = 10) -> float | None:
    """Measured device-to-device copy bandwidth (GB/s, bytes read + written); None on a CPU."""
    if device.type != "cuda":
        return None
    src = torch.empty(int(gib * 2**30) // 4, device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), repeats, 3, device)
    return 2 * src.numel() * 4 / seconds / 1e9


@torch.no_grad()
def decode_ms_per_token(model, prompt_ids: torch.Tensor, tokens: int, graph: bool = False) -> float:
    """Greedy cached decoding cost (ms/token) after prompt_ids (B, T), through
    :class:`phaselm.decoding.StepDecoder` in the model's own dtype.

    No autocast: entering it for every one-token step cost the GPT-2 baseline 42.5 ms/token on an
    H100 against 4.5 without it and 4.8 for ``generate`` (benchmarks/decode_profile.py,
    2026-11-26), which is what made the bench's decode figures ~10× off.
    """
    from ..decoding import StepDecoder

    device = prompt_ids.device
    decoder = StepDecoder(model, prompt_ids, graph=graph)
    token = decoder.first_logits.argmax(-1, keepdim=True)
    for _ in range(2):  # warm-up; the state advances, the speed does not depend on it
        token = decoder.step(token).argmax(-1, keepdim=True)
    sync(device)
    started = time.perf_counter()
    for _ in range(tokens):
        token = decoder.step(token).argmax(-1, keepdim=True)
    sync(device)
    return 1000 * (time.perf_counter() - started) / tokens

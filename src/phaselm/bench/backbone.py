"""Speed of a Phase Core grafted onto a Hugging Face backbone, measured in one run on one device.

``bench_backbone("mamba-2.8b")`` builds the backbone (a named shape with random weights, a local
``save_pretrained`` folder or a hub id), routes its Mamba mixers to PhaseLM's kernels where that
is the fast path, and measures:

- the device's ceilings: bf16 matrix rate and copy bandwidth (measured, not datasheet);
- prefill: tokens/s of a no-grad forward over (batch, seq), its TFLOP/s and share of the
  measured matrix rate;
- graft overhead: the same forward with a core grafted (token and recurrent mode) against the
  bare one, in the same run;
- core training: tokens/s of the Phase-Mamba training step (frozen backbone, only the core
  trains; backward reaches only the layers from the core up), with peak memory and the step's
  FLOP ceiling;
- decode: ms/token at batch 1 through the cache, eager and replayed from a CUDA graph, against
  the floor weight bytes ÷ measured bandwidth;
- optionally transformers' own path for one forward (``reference_seq``), for the ratio;
- which scan path ran (:func:`phaselm.fast_mamba.scan_path`) and every op backend chosen.

``quick=True`` runs a toy-sized Mamba on the CPU in seconds, so CI keeps the command working.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import PhaseLMError
from .timing import copy_bandwidth, decode_ms_per_token, matmul_tflops, median_seconds, sync

MODES = ("token", "recurrent")


@dataclass
class BackboneBenchConfig:
    """What ``phaselm bench backbone`` times: batch × seq_len, the core's layer and size, the modes, repetitions."""

    batch: int = 4
    seq_len: int = 512
    layer: int | str = "middle"
    n_oscillators: int = 16
    modes: tuple[str, ...] = MODES
    steps: int = 10
    warmup: int = 3
    decode_prompt: int = 64
    decode_tokens: int = 64
    reference_seq: int = 0  # > 0: also time one forward of 1 × reference_seq on transformers' own path
    quick: bool = False  # a toy-sized Mamba on the CPU (what CI runs)


def _silent(message: str) -> None:
    pass


def _build(name: str, cfg: BackboneBenchConfig, device: torch.device) -> nn.Module:
    from ..backbones import MAMBA_SHAPES, MambaSpec, build_mamba, load_backbone, mamba_of_shape
    from ..fast_mamba import fast_mamba

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.quick:
        model = build_mamba(MambaSpec(hidden_size=64, n_layers=2), vocab_size=256).to(device, dtype).eval()
    elif name in MAMBA_SHAPES:
        model = mamba_of_shape(name, device, dtype)
    else:
        model, _ = load_backbone(name, str(device))
        model.to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    fast_mamba(model)  # on CUDA: our kernels unless mamba_ssm is installed; on CPU: transformers' path
    return model


def _linear_parameters(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _flops_per_token(model: nn.Module, layer_index: int) -> tuple[float, float]:
    """(forward, core-training step) matrix FLOPs per token: 2 per weight in a forward, and the
    backward's activation gradients (another 2 per weight) from the core's layer up only."""
    from ..graft import find_layers

    layers, _ = find_layers(model)
    forward = 2.0 * _linear_parameters(model)
    upper = sum(_linear_parameters(layer) for layer in layers[layer_index:]) + _linear_parameters(
        model.get_output_embeddings()
    )
    return forward, forward + 2.0 * upper


def _weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _forward_seconds(model, ids, cfg, device) -> float:
    with torch.no_grad():
        return median_seconds(lambda: model(input_ids=ids), cfg.steps, cfg.warmup, device)


def _train_step(handle, ids):
    """One Phase-Mamba training step on ids (B, T): forward, losses, backward, AdamW on the core, drift."""
    from ..losses import LossConfig
    from ..objectives import PhaseCoreObjective
    from ..observables import DriftConfig

    objective = PhaseCoreObjective(handle, LossConfig(), DriftConfig(enabled=True))
    optimizer = torch.optim.AdamW([p for p in handle.core.parameters() if p.requires_grad], lr=1e-4)
    x, y = ids[:, :-1], ids[:, 1:]

    def step():
        out = objective(x, y)
        out.losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        objective.after_step(out)

    return step


def bench_backbone(name: str, cfg: BackboneBenchConfig | None = None, device: str | None = None, log=_silent) -> dict:
    """Measure a Phase Core on backbone ``name`` (shape, folder or hub id); see the module docstring."""
    from ..backbones import MAMBA_SHAPES
    from ..fast_mamba import routing, scan_path
    from ..graft import find_layers, graft, resolve_layer
    from ..ops.backend import chosen
    from ..phase_core import PhaseCoreConfig

    cfg = cfg or BackboneBenchConfig()
    if cfg.quick and name not in MAMBA_SHAPES:
        raise PhaseLMError(
            f"--quick runs a toy stand-in for a named shape; pass one of {', '.join(MAMBA_SHAPES)}, got {name!r}"
        )
    if cfg.quick:
        cfg = BackboneBenchConfig(
            batch=1,
            seq_len=32,
            layer=cfg.layer,
            n_oscillators=cfg.n_oscillators,
            modes=cfg.modes,
            steps=1,
            warmup=1,
            decode_prompt=8,
            decode_tokens=4,
            reference_seq=min(cfg.reference_seq, 16),
            quick=True,
        )
        device = device or "cpu"
    for mode in cfg.modes:
        if mode not in MODES:
            raise PhaseLMError(f"core mode must be one of {', '.join(MODES)}, got {mode!r}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    started = time.perf_counter()

    def note(what: str) -> None:
        log(f"[{time.perf_counter() - started:6.1f} s] {name}: {what}")

    result: dict = {"backbone": name, "quick": cfg.quick, "settings": asdict(cfg)}
    result["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    result["matmul_tflops"] = peak = matmul_tflops(device)
    result["copy_gb_per_s"] = bandwidth = copy_bandwidth(device)
    if peak is not None:
        note(f"ceilings: bf16 matmul {peak:.0f} TFLOP/s, copy {bandwidth:.0f} GB/s")

    model = _build(name, cfg, device)
    layers, _ = find_layers(model)
    layer_index = resolve_layer(cfg.layer, len(layers))
    vocab = model.get_input_embeddings().num_embeddings
    forward_flops, train_flops = _flops_per_token(model, layer_index)
    result.update(
        parameters=sum(p.numel() for p in model.parameters()), weight_bytes=_weight_bytes(model),
        dtype=str(next(model.parameters()).dtype).replace("torch.", ""), layer=layer_index, n_layers=len(layers),
        scan_path=scan_path(model), forward_flops_per_token=forward_flops, train_flops_per_token=train_flops,
    )
    note(f"{result['parameters'] / 1e6:,.1f}M parameters, {result['dtype']}, scan path {result['scan_path']}")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (cfg.batch, cfg.seq_len), generator=gen).to(device)
    tokens = cfg.batch * cfg.seq_len

    bare = _forward_seconds(model, ids, cfg, device)
    result["prefill_tokens_per_s"] = tokens / bare
    result["prefill_tflops"] = forward_flops * tokens / bare / 1e12
    result["prefill_share_of_peak"] = result["prefill_tflops"] / peak if peak else None
    note(f"prefill {tokens / bare:,.0f} tok/s ({result['prefill_tflops']:.1f} TFLOP/s)")

    result["graft_overhead"], result["core_train_tokens_per_s"], result["core_train_peak_gib"] = {}, {}, {}
    result["core_train_flop_ceiling_tokens_per_s"] = peak * 1e12 / train_flops if peak else None
    for mode in cfg.modes:
        handle = graft(model, PhaseCoreConfig(n_oscillators=cfg.n_oscillators, mode=mode), layer=layer_index)
        with_core = _forward_seconds(model, ids, cfg, device)
        result["graft_overhead"][mode] = with_core / bare - 1
        note(f"graft overhead ({mode}) {100 * (with_core / bare - 1):+.1f} %")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        seconds = median_seconds(_train_step(handle, ids), cfg.steps, cfg.warmup, device)
        result["core_train_tokens_per_s"][mode] = (tokens - cfg.batch) / seconds
        result["core_train_peak_gib"][mode] = (
            torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        )
        note(f"core training ({mode}) {(tokens - cfg.batch) / seconds:,.0f} tok/s")
        handle.remove()

    prompt = ids[:1, : min(cfg.decode_prompt, cfg.seq_len)]
    floor_ms = 1000 * result["weight_bytes"] / (bandwidth * 1e9) if bandwidth else None
    result["decode_floor_ms"] = floor_ms
    result["decode_ms_per_token"] = {"eager": decode_ms_per_token(model, prompt, cfg.decode_tokens, graph=False)}
    if device.type == "cuda":
        result["decode_ms_per_token"]["cuda_graph"] = decode_ms_per_token(model, prompt, cfg.decode_tokens, graph=True)
        handle = graft(model, PhaseCoreConfig(n_oscillators=cfg.n_oscillators, mode=cfg.modes[-1]), layer=layer_index)
        result["decode_ms_per_token"][f"cuda_graph_with_core_{cfg.modes[-1]}"] = decode_ms_per_token(
            model, prompt, cfg.decode_tokens, graph=True
        )
        handle.remove()
    for way, ms in result["decode_ms_per_token"].items():
        note(
            f"decode ({way}) {ms:.2f} ms/token"
            + (f", {ms / floor_ms:.2f}× the floor {floor_ms:.2f} ms" if floor_ms else "")
        )

    if cfg.reference_seq:
        long_ids = torch.randint(0, vocab, (1, cfg.reference_seq), generator=gen).to(device)
        fast = _forward_seconds(model, long_ids, BackboneBenchConfig(steps=3, warmup=1), device)
        routed = routing(model)
        if routed is not None:
            routed.remove()
        with torch.no_grad():
            sync(device)
            t0 = time.perf_counter()
            model(input_ids=long_ids)
            sync(device)
            slow = time.perf_counter() - t0
        result["reference_path"] = {
            "seq_len": cfg.reference_seq,
            "path": scan_path(model),
            "seconds": slow,
            "fast_seconds": fast,
            "speedup": slow / fast,
        }
        note(
            f"transformers' own path at 1 × {cfg.reference_seq}: {slow:.2f} s vs {fast * 1000:.1f} ms "
            f"({slow / fast:,.0f}×)"
        )
    result["ops"] = chosen()
    result["seconds"] = time.perf_counter() - started
    return result


def _fmt(value, spec: str = ",.0f", suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:{spec}}{suffix}"


def backbone_table(result: dict) -> list[str]:
    """Markdown rows of a :func:`bench_backbone` result."""
    rows = [
        ("device", result["device"]),
        (
            "backbone",
            f"{result['backbone']}{' (quick, toy size)' if result['quick'] else ''}: "
            f"{result['parameters'] / 1e6:,.1f}M parameters, "
            f"{result['n_layers']} layers, {result['dtype']}; core at layer {result['layer']}",
        ),
        ("scan path", result["scan_path"]),
        (
            "measured ceilings",
            f"bf16 matmul {_fmt(result['matmul_tflops'])} TFLOP/s, copy {_fmt(result['copy_gb_per_s'])} GB/s",
        ),
        ("shape", f"{result['settings']['batch']} × {result['settings']['seq_len']} tokens"),
        (
            "prefill",
            f"{_fmt(result['prefill_tokens_per_s'])} tok/s, {_fmt(result['prefill_tflops'], '.1f')} TFLOP/s"
            + (
                f" ({100 * result['prefill_share_of_peak']:.0f} % of the matmul rate)"
                if result["prefill_share_of_peak"]
                else ""
            ),
        ),
    ]
    ceiling = result["core_train_flop_ceiling_tokens_per_s"]
    for mode, speed in result["core_train_tokens_per_s"].items():
        peak = result["core_train_peak_gib"][mode]
        rows.append(
            (
                f"core training ({mode})",
                f"{_fmt(speed)} tok/s"
                + (f", peak {peak:.1f} GiB" if peak is not None else "")
                + (f"; FLOP ceiling {_fmt(ceiling)} tok/s" if ceiling else ""),
            )
        )
    for mode, overhead in result["graft_overhead"].items():
        rows.append((f"graft overhead ({mode})", f"{100 * overhead:+.1f} % of the bare forward"))
    floor = result["decode_floor_ms"]
    for way, ms in result["decode_ms_per_token"].items():
        rows.append(
            (
                f"decode, batch 1 ({way.replace('_', ' ')})",
                f"{ms:.2f} ms/token" + (f" = {ms / floor:.2f}× the floor {floor:.2f} ms" if floor else ""),
            )
        )
    if "reference_path" in result:
        ref = result["reference_path"]
        rows.append(
            (
                f"transformers' own path, 1 × {ref['seq_len']}",
                f"{ref['seconds']:.2f} s vs {1000 * ref['fast_seconds']:.1f} ms: {ref['speedup']:,.0f}× faster",
            )
        )
    return ["| measure | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]

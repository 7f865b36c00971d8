"""Training state (optimizer, scheduler, RNG states, the caller's extras) as a JSON tree plus
named tensors, so a checkpoint stores it in safetensors + JSON and loading it never runs code.

:func:`encode_training_state` splits the state; :func:`decode` puts it back together;
:func:`restore_rng_states` sets the global RNGs from what :func:`capture_rng_states` recorded.
"""

from __future__ import annotations

import json
import numbers
import random
from typing import Any

import torch

from .errors import PhaseLMError

# The checkpoint format (phaselm.checkpoint) whose training state this encoding writes.
FORMAT = "phaselm-checkpoint-v1"

# Markers used when encoding optimizer / scheduler state dicts as JSON.
_TENSOR = "__tensor__"  # {"__tensor__": name} -> tensor stored under `name`
_TUPLE = "__tuple__"  # tuples survive the round trip (e.g. AdamW betas)
_INT_KEYS = "__int_keys__"  # dicts keyed by int (optimizer state is keyed by param id)
_DROP = object()  # values JSON cannot hold (callables): left out, as torch itself does


def encode_training_state(
    target, optimizer_state, scheduler, extra, extra_tensors
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Split optimizer / scheduler / RNG / caller state into a JSON tree and named tensors."""
    tensors: dict[str, torch.Tensor] = {}
    state: dict[str, Any] = {"format": FORMAT}
    state["optimizer"] = encode(optimizer_state, "optimizer", tensors) if optimizer_state is not None else None
    state["scheduler"] = encode(scheduler.state_dict(), "scheduler", tensors) if scheduler is not None else None
    state["rng"] = encode(capture_rng_states(), "rng", tensors)

    if extra is not None and not isinstance(extra, dict):
        raise PhaseLMError(
            f"checkpoint extra for {target} must be a dict, got {type(extra).__name__}; "
            "pass a JSON dict"
        )
    json_text(extra or {}, f"checkpoint extra for {target} (pass tensors via extra_tensors)")
    state["extra"] = extra or {}

    names = {}
    for name, tensor in (extra_tensors or {}).items():
        if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
            raise PhaseLMError(
                f"checkpoint extra_tensors for {target} must map names to tensors, got {name!r}: "
                f"{type(tensor).__name__}; pass e.g. {{'data_generator': g.get_state()}}"
            )
        names[name] = {_TENSOR: f"extra_tensors.{name}"}
        tensors[f"extra_tensors.{name}"] = tensor
    state["extra_tensors"] = names
    return state, prepare_tensors(tensors)


def capture_rng_states() -> dict:
    """Every global RNG a training loop is likely to draw from."""
    version, internal, gauss_next = random.getstate()
    rng: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        rng["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    try:
        import numpy as np
    except ImportError:
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        rng["numpy"] = {
            "bit_generator": name,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        }
    return rng


def restore_rng_states(rng: dict) -> None:
    """Set the global RNGs (torch CPU and CUDA, Python, numpy) to the states in ``rng``."""
    if "torch_cpu" in rng:
        torch.set_rng_state(rng["torch_cpu"])
    if "python" in rng:
        py = rng["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if rng.get("torch_cuda") and torch.cuda.is_available():
        # Saved on a machine with more GPUs than this one: restore the ones that exist.
        torch.cuda.set_rng_state_all(rng["torch_cuda"][: torch.cuda.device_count()])
    if "numpy" in rng:
        try:
            import numpy as np
        except ImportError:
            return
        st = rng["numpy"]
        np.random.set_state(
            (
                st["bit_generator"],
                np.array(st["keys"], dtype=np.uint32),
                st["pos"],
                st["has_gauss"],
                st["cached_gaussian"],
            )
        )


def prepare_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors with no two sharing storage (safetensors refuses both)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in tensors.items():
        t = tensor.detach().to("cpu")
        ptr = t.untyped_storage().data_ptr()
        if not t.is_contiguous() or ptr in seen:
            t = t.contiguous() if not t.is_contiguous() else t.clone()
            ptr = t.untyped_storage().data_ptr()
        seen.add(ptr)
        out[name] = t
    return out


def encode(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON tree for ``obj``; tensors go to ``tensors`` under dotted names like ``optimizer.state.0.exp_avg``."""
    if isinstance(obj, torch.Tensor):
        while name in tensors:  # keys containing dots could collide; keep every tensor
            name += "_"
        tensors[name] = obj
        return {_TENSOR: name}
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, (str, int)) or isinstance(key, bool):
                continue
            enc = encode(value, f"{name}.{key}", tensors)
            if enc is not _DROP:
                out[str(key)] = enc
        if obj and all(isinstance(k, int) and not isinstance(k, bool) for k in obj):
            return {_INT_KEYS: out}
        return out
    if isinstance(obj, (list, tuple)):
        items = []
        for i, value in enumerate(obj):
            enc = encode(value, f"{name}.{i}", tensors)
            items.append(None if enc is _DROP else enc)  # keep positions (LambdaLR lr_lambdas)
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return float(obj)
    return _DROP


def decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode`."""
    if isinstance(obj, dict):
        if set(obj) == {_TENSOR}:
            return tensors[obj[_TENSOR]]
        if set(obj) == {_TUPLE}:
            return tuple(decode(v, tensors) for v in obj[_TUPLE])
        if set(obj) == {_INT_KEYS}:
            return {int(k): decode(v, tensors) for k, v in obj[_INT_KEYS].items()}
        return {k: decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v, tensors) for v in obj]
    return obj


def json_text(obj: Any, what: str) -> str:
    """``obj`` as indented JSON; a one-line PhaseLMError naming ``what`` if it holds anything JSON cannot."""
    try:
        return json.dumps(obj, indent=2)
    except (TypeError, ValueError) as exc:
        raise PhaseLMError(
            f"{what} is not JSON-serialisable ({' '.join(str(exc).split())}); "
            "use plain numbers, strings, lists and dicts"
        ) from None

"""Tiny run directories for the live-view tests (serve/test_serve.py, serve/test_browser.py).

``make_kssm_run`` lays a run out as `phaselm train-lm` writes it (config.toml + model/ saved
with save_backbone, char tokenizer); ``make_grafted_run`` trains a Phase Core for one step on
a tiny saved Mamba through `phaselm.experiments.phase_mamba.train_core`, as `phaselm train`
does. Both take a second or two.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import torch

from phaselm.data import CharTokenizer, load_text

TINY_KSSM = dict(hidden_size=32, n_layers=2, head_dim=16, n_oscillators=8, n_harmonics=4, chunk_size=8)
CORPUS_CHARS = 12_000


def write_corpus(root: Path) -> Path:
    path = root / "corpus.txt"
    path.write_text(load_text("tinyshakespeare")[:CORPUS_CHARS], encoding="utf-8")
    return path


def make_kssm_run(root: Path, name: str = "kssm") -> Path:
    """A K-SSM run directory whose R is spread over tokens (so tones and interventions show)."""
    import tomli_w

    from phaselm.backbones import save_backbone
    from phaselm.models.kssm import KSSMConfig, KSSMForCausalLM

    corpus = write_corpus(root)
    tokenizer = CharTokenizer.from_text(corpus.read_text(encoding="utf-8"))
    torch.manual_seed(0)
    model = KSSMForCausalLM(KSSMConfig(vocab_size=tokenizer.vocab_size, **TINY_KSSM))
    with torch.no_grad():
        for block in model.blocks:
            block.bank.omega0.copy_(torch.randn_like(block.bank.omega0) * 0.8)
            block.bank.to_params.weight.mul_(40)
    run = root / name
    run.mkdir(parents=True)
    recipe = {"arch": "kssm", "data": {"corpus": str(corpus), "val_fraction": 0.1}, "train": {"seq_len": 16}}
    (run / "config.toml").write_text(tomli_w.dumps(recipe), encoding="utf-8")
    save_backbone(model.eval(), tokenizer, run / "model")
    return run


def make_grafted_run(root: Path, name: str = "pm") -> Path:
    """A Phase-Mamba run directory (config.toml + core checkpoint) over a tiny saved Mamba."""
    from phaselm.backbones import MambaSpec, build_mamba, save_backbone
    from phaselm.experiments.phase_mamba import BackboneConfig, CorpusConfig, PhaseMambaRecipe, SampleConfig, train_core
    from phaselm.phase_core import PhaseCoreConfig
    from phaselm.training import TrainConfig

    corpus = write_corpus(root)
    tokenizer = CharTokenizer.from_text(corpus.read_text(encoding="utf-8"))
    torch.manual_seed(0)
    backbone = root / f"{name}-backbone"
    save_backbone(
        build_mamba(MambaSpec(hidden_size=16, n_layers=2, state_size=4), tokenizer.vocab_size).eval(),
        tokenizer,
        backbone,
    )
    recipe = PhaseMambaRecipe(
        backbone=BackboneConfig(name=str(backbone)),
        core=PhaseCoreConfig(n_oscillators=8, alpha_init=0.5),
        data=CorpusConfig(corpus=str(corpus)),
        train=TrainConfig(steps=1, batch_size=2, seq_len=16, eval_batches=1, log_every=1, warmup_steps=0),
        sample=SampleConfig(max_new_tokens=4),
    )
    run = root / name
    train_core(recipe, run, progress=False)
    return run


def post(port: int, body, path: str = "/api/generate", content_type: str = "application/json", raw: bytes | None = None,
         headers: dict | None = None):
    """POST to the server → (status, content type, body bytes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    data = raw if raw is not None else json.dumps(body).encode("utf-8")
    conn.request("POST", path, body=data, headers={"Content-Type": content_type, **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type"), payload


def get(port: int, path: str, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type"), payload


def events(payload: bytes) -> list[dict]:
    return [json.loads(line) for line in payload.decode("utf-8").splitlines() if line.strip()]

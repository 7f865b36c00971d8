"""Model folders as a Hugging Face user meets them: AutoTokenizer, AutoModelForCausalLM and
pipeline("text-generation") on every family PhaseLM writes, with nothing imported but phaselm."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cli_helpers import TINY_MODEL, TINY_TRAIN
from phaselm.data import load_tokenizer

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    """A tiny trained model folder of each family: K-SSM, the fusion hybrid, the GPT-2 baseline."""
    from phaselm.config import load_recipe, parse_override
    from phaselm.experiments.language_model import LMRecipe, train_lm

    folders = {}
    for recipe in ("kssm-v3", "fusion-gf-mh", "gpt2-fusion-baseline"):
        arch = load_recipe(LMRecipe, RECIPES / f"{recipe}.toml").arch
        overrides = dict(parse_override(item) for item in TINY_TRAIN + TINY_MODEL[arch])
        out = tmp_path_factory.mktemp(recipe) / "run"
        train_lm(load_recipe(LMRecipe, RECIPES / f"{recipe}.toml", overrides), out, progress=False)
        folders[recipe] = out / "model"
    return folders


@pytest.mark.slow
@pytest.mark.parametrize("family", ["kssm-v3", "fusion-gf-mh", "gpt2-fusion-baseline"])
def test_pipeline_generates_with_our_ids(model_folders, family):
    from transformers import AutoTokenizer, pipeline

    folder = str(model_folders[family])
    ours = load_tokenizer(folder)
    hf = AutoTokenizer.from_pretrained(folder)
    prompt = "ROMEO:\nWhat light"
    assert hf(prompt)["input_ids"] == ours.encode(prompt) and hf.decode(ours.encode(prompt)) == prompt
    generator = pipeline("text-generation", model=folder)
    text = generator(prompt, max_new_tokens=5, do_sample=False, return_full_text=True)[0]["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)


def test_import_phaselm_registers_the_auto_classes():
    """A fresh interpreter: `import phaselm` alone makes AutoConfig know our model types."""
    code = (
        "import phaselm\nfrom transformers import AutoConfig\n"
        "print(AutoConfig.for_model('kssm').model_type, AutoConfig.for_model('phaselm_fusion').model_type)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["kssm", "phaselm_fusion"]

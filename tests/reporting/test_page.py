"""report.html: one self-contained page per run (every section, plots embedded as base64 PNG,
nothing referenced from outside), written by every training run and rebuilt by
`phaselm report RUN_DIR` from the run directory's files."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import warnings
from pathlib import Path

import pytest

from cli_helpers import run_cli as cli
from phaselm.reporting import discover_results, markdown_to_html, write_html_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TONES = {"over-sync": 12, "balance": 30, "goldilocks": 40, "unbound-joy": 10, "silent-intimacy": 5, "unformed": 3}
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY_TRAIN_LM = [
    "train.steps=3", "train.batch_size=2", "train.seq_len=16", "train.eval_batches=1", "train.log_every=1",
    "kssm.hidden_size=32", "kssm.n_layers=2", "kssm.head_dim=16", "kssm.n_oscillators=8", "kssm.n_harmonics=4",
]  # fmt: skip
SECTIONS = (
    "run",
    "statistics",
    "plots",
    "tones",
    "drift",
    "results",
    "distributions",
    "samples",
    "config",
    "protocol",
    "software",
)


def train_record(step: int) -> dict:
    r = 0.5 + 0.04 * step / 10
    return {
        "step": step, "loss": 3.2 - 0.01 * step, "ce": 3.1 - 0.01 * step,
        "uncertainty_reg": 0.02, "presence": 0.8, "tonal": 0.01,
        "r_mean": r, "r_min": r - 0.3, "r_max": min(r + 0.2, 1.0), "u_mean": 0.45, "ru_mean": 0.32, "tones": TONES,
        "goldilocks_residence": 0.12, "drift_action": "COAST", "coupling_scale": 1.0, "lr": 1e-3,
        "tokens_per_s": 1234.5,
    }  # fmt: skip


SUMMARY = {
    "order": {"mean": 0.71, "std": 0.1, "min": 0.2, "max": 0.97},
    "uncertainty": {"mean": 0.45, "std": 0.05, "min": 0.3, "max": 0.6},
    "ru": {"mean": 0.32, "std": 0.04, "min": 0.1, "max": 0.5},
    "tones": {k: v / 100 for k, v in TONES.items()},
    "goldilocks_residence": 0.1,
    "drift_actions": {"BRAKE": 3, "COAST": 10, "BOOST": 2},
    "val_ppl_with_core": 12.1,
    "val_ppl_without_core": 12.5,
    "graft_layer": "backbone.layers.2",
    "samples": {
        "prompt": "ROMEO:",
        "blind": " To be, or not to be",
        "measured": [
            {"token": f"<w{i}>", "r": 0.5 + i / 200, "u": 0.45, "ru": (0.5 + i / 200) * 0.45, "tone": "goldilocks"}
            for i in range(40)
        ],
    },
}  # fmt: skip

CONFIG = '[train]\nsteps = 40\nnote = "</pre><script>alert(1)</script>"\n'
PROTOCOL = '[protocol]\nname = "observation"\nsamples = 10\n'
PROTOCOL_RESULT = {
    "protocol": "observation: blind vs measured",
    "command": "phaselm protocol run observation.toml",
    "n": 10,
    "alpha": 0.05,
    "tables": [{"title": "R variance, blind vs measured", "header": ["metric", "n", "blind", "measured", "p (Holm)"],
                "rows": [["R variance", 10, 0.012, 0.013, 0.91]], "note": "Brown–Forsythe test"}],
    "distributions": {"R mean": {"blind": [0.7, 0.71, 0.69, 0.72], "measured": [0.7, 0.71, 0.7, 0.69]},
                      "R variance": {"blind": [0.01, 0.012, 0.011], "measured": [0.012, 0.011, 0.013]}},
    "scatter": {"blind": [[0.7, 0.5], [0.85, 0.45]], "measured": [{"r": 0.9, "u": 0.41}]},
}  # fmt: skip


def data_images(html: str) -> list[bytes]:
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources
    return [base64.b64decode(s.split(",", 1)[1], validate=True) for s in sources]


def assert_self_contained(html: str) -> None:
    # No resource or link points outside the page: only data: URIs and in-page anchors.
    for attr, value in re.findall(r"""\s(src|href|action|poster|srcset)\s*=\s*["']?([^"'\s>]*)""", html):
        assert value.startswith("data:") or value.startswith("#"), (attr, value)
    assert "<script" not in html and "<link" not in html and "<iframe" not in html
    assert "url(" not in html and "@import" not in html


@pytest.fixture
def full_run(tmp_path):
    records = [train_record(s) for s in (10, 20, 30, 40)] + [
        {"step": 40, "split": "val", "val_ce": 2.9, "val_ppl": 18.2}
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (tmp_path / "config.toml").write_text(CONFIG, encoding="utf-8")
    # An eval result as `phaselm eval` leaves it: NAME.json (with Markdown tables) + NAME.png.
    evals = tmp_path / "evals"
    evals.mkdir()
    write_report(tmp_path, "scratch", {})  # any PNG will do as the eval's own plot
    (evals / "intervention.png").write_bytes((tmp_path / "plots" / "loss.png").read_bytes())
    eval_result = {
        "eval": "r_intervention", "command": "phaselm eval intervention RUN --kind sync", "n_prompts": 3,
        "markdown": (
            "| intervention | metric | n | p (t, Holm) |\n|---|---|---|---|\n"
            "| sync @ layers all | mean R | 3 | 0.01 |\n| pin \\| odd | KL | 3 | 0.5 |"
        ),
        "results": [{"label": "sync @ layers all"}],
        "per_prompt": {
            "unforced": {"mean_r": [0.5, 0.6, 0.55]},
            "forced": [{"mean_r": [1.0, 1.0, 1.0], "kl": [0.1, 0.2, 0.3]}],
        },
        "files": {"json": str(evals / "intervention.json"), "png": str(evals / "intervention.png")},
    }  # fmt: skip
    (evals / "intervention.json").write_text(json.dumps(eval_result), encoding="utf-8")
    (evals / "broken.json").write_text("{not json", encoding="utf-8")
    for name in ("report.md", "report.html", "provenance.json"):
        (tmp_path / name).unlink()
    return tmp_path


def test_every_section_and_self_contained(full_run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no matplotlib glyph warnings either
        path = write_html_report(
            full_run,
            "Full run",
            SUMMARY,
            commands=["phaselm train x.toml"],
            protocol_text=PROTOCOL,
            results=[PROTOCOL_RESULT] + [r for _, r in discover_results(full_run)[0]],
        )
    assert path == full_run / "report.html"
    html = path.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>") and "<title>Full run</title>" in html
    for anchor in SECTIONS:
        assert f'<section id="{anchor}">' in html, anchor
        assert f'<a href="#{anchor}">' in html, anchor
    assert_self_contained(html)

    images = data_images(html)
    assert all(i.startswith(PNG_SIGNATURE) and len(i) > 2000 for i in images)
    alts = re.findall(r'<img alt="([^"]*)"', html)
    for alt in ("Loss over steps", "R over steps", "Tone distribution", "R–U scatter with the Goldilocks box",
                "observation: blind vs measured: per-condition distributions", "r_intervention plot",
                "r_intervention: per-condition distributions"):  # fmt: skip
        assert alt in alts, alt

    # Statistics: the summary, the protocol's table with its n, the eval's Markdown as a table.
    assert "<td>R</td><td class=\"num\">0.71</td>" in html and "backbone.layers.2" in html
    assert "<h4>R variance, blind vs measured</h4>" in html and "Brown–Forsythe test" in html
    assert "<td>sync @ layers all</td><td>mean R</td><td class=\"num\">3</td>" in html
    assert "<td>pin | odd</td>" in html  # an escaped pipe stays inside its cell
    assert "<td>R mean</td><td>blind</td><td class=\"num\">4</td>" in html  # per-condition n
    assert "broken.json" not in html  # results given: nothing discovered
    # Samples: the measured tokens are coloured spans with R, U and R·U in their titles.
    assert html.count('class="tok"') == 40 and 'title="R 0.5 · U 0.45 · R·U 0.225 · 🌀 goldilocks"' in html
    # Exact config (escaped), protocol with its hash, commands.
    assert "&lt;/pre&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert hashlib.sha256(PROTOCOL.encode()).hexdigest() in html and "samples = 10" in html
    assert "phaselm train x.toml" in html and "phaselm protocol run observation.toml" in html
    # Software versions and the git commit.
    software = html[html.index('<section id="software">'):]
    for name in ("python", "torch", "transformers", "phaselm", "numpy", "git commit"):
        assert f"<td>{name}</td>" in software, name
    assert re.search(r"<td>git commit</td><td>([0-9a-f]{40}|not available)", software)
    provenance = json.loads((full_run / "provenance.json").read_text())
    assert (
        provenance["title"] == "Full run"
        and provenance["software"]["torch"]
        and provenance["commands"] == ["phaselm train x.toml"]
    )


def test_discovered_results_and_broken_files(full_run):
    found, problems = discover_results(full_run)
    assert [p.name for p, _ in found] == ["intervention.json"]
    assert len(problems) == 1 and problems[0].startswith("evals/broken.json: not readable as JSON")
    html = write_html_report(full_run, "Run").read_text(encoding="utf-8")
    assert "r_intervention" in html and "evals/broken.json: not readable as JSON" in html
    assert '<section id="protocol">' not in html and '<section id="samples">' not in html  # no data: no section
    assert '<section id="config">' in html and "steps = 40" in html


def test_write_report_writes_the_page_too(tmp_path):
    records = [{"step": s, "loss": 3.0 - 0.01 * s, "ce": 3.0 - 0.01 * s} for s in (10, 20, 30)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    write_report(tmp_path, "Pretraining", {"val_ppl": 20.0}, "[train]\nsteps = 30\n", ["phaselm pretrain --out x"])
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "<h1>Pretraining</h1>" in html and len(data_images(html)) == 1  # loss only: no R, tones or scatter
    assert '<section id="tones">' not in html and "val_ppl" in html
    assert_self_contained(html)


def test_markdown_tables():
    html = markdown_to_html("# Title\n\nSome text\n| a | b |\n|:--|--:|\n| `x \\| y` | 2 |\n")
    assert (
        html
        == "<h4>Title</h4>\n<p>Some text</p>\n"
        '<table><tr><th>a</th><th>b</th></tr><tr><td>x | y</td><td class="num">2</td></tr></table>'
    )


@pytest.mark.slow
def test_rebuild_tiny_train_lm_run(tmp_path, capsys):
    run = tmp_path / "run"
    sets = [x for item in TINY_TRAIN_LM for x in ("--set", item)]
    code, _, err = cli(capsys, "train-lm", str(RECIPES / "kssm-v3.toml"), "--out", str(run), *sets)
    assert code == 0, err
    first = (run / "report.html").read_text(encoding="utf-8")
    assert "<h1>PhaseLM language model (kssm)</h1>" in first and "R–U scatter with the Goldilocks box" in first
    code, _, err = cli(
        capsys,
        "eval",
        "intervention",
        str(run),
        "--kind",
        "sync",
        "--prompts",
        "3",
        "--prompt-tokens",
        "8",
        "--max-new-tokens",
        "4",
        "--batch-size",
        "3",
    )
    assert code == 0, err

    (run / "report.html").unlink()
    code, out, err = cli(capsys, "report", str(run))
    assert code == 0 and out.strip() == f"wrote {run / 'report.html'}", err
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "<h1>PhaseLM language model (kssm)</h1>" in html and "rebuilt from the run directory" in html
    for anchor in ("run", "statistics", "plots", "tones", "results", "distributions", "config", "software"):
        assert f'<section id="{anchor}">' in html, anchor
    assert_self_contained(html)
    assert len(data_images(html)) >= 6  # loss, R, tones, scatter, the eval's plot, its distributions
    recorded = json.loads((run / "provenance.json").read_text(encoding="utf-8"))
    assert (
        recorded["title"] == "PhaseLM language model (kssm)" and recorded["commands"][0] in html
    )  # as the run recorded it
    # main([...]) records its own arguments, not pytest's sys.argv
    assert recorded["commands"][0].startswith(f"phaselm train-lm {RECIPES / 'kssm-v3.toml'} --out {run} ")
    assert (
        "r_intervention" in html
        and "sync @ layers all" in html
        and (run / "config.toml").read_text(encoding="utf-8").splitlines()[0] in html
    )

    code, out, err = cli(capsys, "report", str(run), "--out", str(tmp_path / "copy.html"), "--json")
    assert (
        code == 0 and json.loads(out) == {"report": str(tmp_path / "copy.html")} and (tmp_path / "copy.html").is_file()
    )


def test_report_bad_inputs(tmp_path, capsys):
    for target, fragment in ((tmp_path / "missing", "does not exist"), (tmp_path, "is not a run directory")):
        code, _, err = cli(capsys, "report", str(target))
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": \n', encoding="utf-8")
    code, _, err = cli(capsys, "report", str(tmp_path))
    assert code == 2 and "metrics.jsonl, line 1" in err

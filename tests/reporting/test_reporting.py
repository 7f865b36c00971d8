"""Run reports: metrics reading, plots, and report.md on synthetic run directories."""

from __future__ import annotations

import json
import warnings

import pytest

from phaselm.reporting import plot_loss, plot_order, plot_tones, read_metrics, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TONES = {"over-sync": 12, "balance": 30, "goldilocks": 40, "unbound-joy": 10, "silent-intimacy": 5, "unformed": 3}


def train_record(step: int) -> dict:
    r = 0.5 + 0.04 * step / 10
    return {
        "step": step, "loss": 3.2 - 0.1 * step / 10, "ce": 3.1 - 0.1 * step / 10,
        "uncertainty_reg": 0.02, "presence": 0.8, "tonal": 0.01,
        "r_mean": r, "r_min": r - 0.3, "r_max": min(r + 0.2, 1.0),
        "u_mean": 0.45, "ru_mean": 0.32, "tones": TONES, "goldilocks_residence": 0.12,
        "drift_action": "COAST", "coupling_scale": 1.0, "lr": 1e-3, "tokens_per_s": 1234.5,
    }  # fmt: skip


def pretrain_record(step: int) -> dict:
    return {"step": step, "loss": 3.0 - 0.05 * step / 10, "ce": 3.0 - 0.05 * step / 10, "lr": 1e-3}


def write_metrics(run_dir, records, extra_lines=()) -> None:
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


SUMMARY = {
    "order": {"mean": 0.71, "std": 0.1, "min": 0.2, "max": 0.97},
    "uncertainty": {"mean": 0.45, "std": 0.05, "min": 0.3, "max": 0.6},
    "ru": {"mean": 0.32, "std": 0.04, "min": 0.1, "max": 0.5},
    "tones": {"over-sync": 0.12, "balance": 0.3, "goldilocks": 0.4, "unbound-joy": 0.1,
              "silent-intimacy": 0.05, "unformed": 0.03},
    "goldilocks_residence": 0.1,
    "drift_actions": {"BRAKE": 3, "COAST": 10, "BOOST": 2},
    "val_ppl_with_core": 12.1,
    "val_ppl_without_core": 12.5,
    "samples": {
        "blind": "To be, or not to be",
        "measured": [{"token": f" w|{i}", "r": 0.8, "u": 0.4, "tone": "⚖"} for i in range(80)],
    },
}  # fmt: skip


def assert_png(path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE), path


@pytest.fixture
def full_run(tmp_path):
    records = [train_record(s) for s in (10, 20, 30, 40)]
    records.append({"step": 40, "split": "val", "val_ce": 2.9, "val_ppl": 18.2})
    write_metrics(tmp_path, records, extra_lines=[""])  # a trailing blank line is allowed
    return tmp_path


def test_read_metrics_skips_blank_lines(full_run):
    records = read_metrics(full_run)
    assert len(records) == 5
    assert records[-1]["split"] == "val"


def test_full_report(full_run):
    with warnings.catch_warnings():
        # A glyph the font lacks is a UserWarning from matplotlib: the report must not cause one.
        warnings.simplefilter("error")
        report = write_report(
            full_run, "Test run", SUMMARY, config_text='[train]\nsteps = 40\n', commands=["phaselm train x.toml"]
        )

    assert report == full_run / "report.md"
    for name in ("order.png", "loss.png", "tones.png"):
        assert_png(full_run / "plots" / name)
    text = report.read_text(encoding="utf-8")
    for header in (
        "# Test run", "## Command", "## Machine", "## Key statistics", "## Tone distribution",
        "## Drift actions", "## Plots", "## Samples", "### Blind sample", "### Measured sample", "## Config",
    ):  # fmt: skip
        assert f"\n{header}\n" in f"\n{text}", header
    for link in ("![R over steps](plots/order.png)", "](plots/loss.png)", "](plots/tones.png)"):
        assert link in text
    assert "UTC" in text and "torch" in text and "phaselm train x.toml" in text
    assert "| R | 0.71 | 0.1 | 0.2 | 0.97 |" in text
    assert "| R·U |" in text and "10.0 %" in text  # Goldilocks residence
    assert "| 🌀 goldilocks | 40.0 % |" in text
    assert "| COAST | 10 |" in text
    assert "12.1" in text and "12.5" in text
    assert "```toml\n[train]\nsteps = 40\n```" in text
    # Measured: the first 64 tokens only, with the cell-breaking '|' escaped.
    assert "w\\|63" in text and "w\\|64" not in text
    assert text.index("## Command") < text.index("## Key statistics") < text.index("## Plots")


def test_pretraining_run_has_loss_plot_only(tmp_path):
    write_metrics(tmp_path, [pretrain_record(s) for s in (10, 20, 30)])
    report = write_report(tmp_path, "Pretraining", {"val_ppl_without_core": 20.0})

    assert_png(tmp_path / "plots" / "loss.png")
    assert not (tmp_path / "plots" / "order.png").exists()
    assert not (tmp_path / "plots" / "tones.png").exists()
    text = report.read_text(encoding="utf-8")
    assert "](plots/loss.png)" in text and "order.png" not in text and "tones.png" not in text
    for absent in ("## Tone distribution", "## Drift actions", "## Samples", "## Config", "## Command"):
        assert absent not in text
    assert "| validation perplexity, without core | 20 |" in text


def test_tones_fall_back_to_metric_counts(tmp_path):
    write_metrics(tmp_path, [train_record(10), train_record(20)])
    text = write_report(tmp_path, "No tones in summary", {}).read_text(encoding="utf-8")
    assert_png(tmp_path / "plots" / "tones.png")
    assert "| 🌀 goldilocks | 40.0 % |" in text


def test_plots_without_data_return_none(tmp_path):
    records = [{"step": 1, "split": "val", "val_ppl": 3.0}]
    assert plot_order(records, tmp_path / "o.png") is None
    assert plot_loss(records, tmp_path / "l.png") is None
    assert plot_tones({}, tmp_path / "t.png") is None
    assert not list(tmp_path.iterdir())


def test_malformed_line_names_file_and_line(tmp_path, raises_phaselm):
    write_metrics(tmp_path, [pretrain_record(10)], extra_lines=["", '{"step": 20, "loss": '])
    with raises_phaselm(r"metrics\.jsonl, line 3"):
        read_metrics(tmp_path)


def test_non_object_line_is_an_error(tmp_path, raises_phaselm):
    write_metrics(tmp_path, [pretrain_record(10)], extra_lines=["[1, 2]"])
    with raises_phaselm(r"line 2: expected a JSON object"):
        read_metrics(tmp_path)

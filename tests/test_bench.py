"""The bench (benchmarks/bench.py) at a tiny width on a few digits images: the JSON's structure and
numbers, the growth fit and plot, and budgets that fail exit non-zero naming the step."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench import main
from benchmarks.steps import STEPS

TINY = ["--data", "digits", "--isolation", "none", "--threads", "1", "--sweep-images", "8", "--slice-images", "8",
        "--calibration-per-class", "1", "--channel-per-class", "2", "--channel-samples", "64", "--train-steps", "2",
        "--profile-batches", "2", "--batch-size", "8", "--task0-batch-size", "32", "--task0-train-batches", "1",
        "--speedup-rounds", "1"]


@pytest.mark.slow
def test_bench_json_is_complete_and_sane(tmp_path):
    code = main(["--widths", "0.0625", "--budget-widths", "--out", str(tmp_path), *TINY])
    report = json.loads((tmp_path / "bench-cpu.json").read_text())
    assert code == 0, [b for b in report["budgets"] if not b["ok"]]
    assert report["ok"] is True and (tmp_path / "bench-cpu.md").is_file()
    machine = report["machine"]
    assert machine["kind"] == "cpu" and machine["threads"] == 1 and machine["torch"]
    assert len(report["load_average_start"]) == 3 and report["data"]["dataset"] == "digits"
    width = report["widths"]["0.0625"]
    assert width["params"] > 0 and width["macs"] > 0 and len(width["channels"]) == 13
    assert list(width["steps"]) == list(STEPS)
    for name, step in width["steps"].items():
        assert step["ok"], (name, step.get("error"))
        assert step["wall_s"] > 0 and step["cpu_s"] >= 0 and step["process_wall_s"] >= step["wall_s"], name
        assert step["step_peak_rss_mb"] > 0 and step["process_peak_rss_mb"] >= step["step_peak_rss_mb"], name
        assert step["cuda_peak_mb"] is None
        assert step["phases"] and all(p["wall_s"] > 0 for p in step["phases"].values()), name
        assert {"images", "weights", "macs"} <= set(step["work"]), name
    steps = width["steps"]
    assert steps["sensitivity_sweep"]["work"]["images"] == 8 and steps["snip"]["work"]["images"] == 10
    assert steps["sweep_vs_naive"]["extra"]["identical"] is True
    assert 0 < steps["sweep_vs_naive"]["extra"]["mac_ratio"] < 1
    assert steps["magnitude_coo"]["extra"]["coo_mismatches"] == 0
    assert steps["channel_pruning"]["extra"]["macs_pruned"] < steps["channel_pruning"]["extra"]["macs_dense"]
    speedup = steps["channel_speedup"]["extra"]
    assert speedup["mac_reduction"] > 1 and speedup["speedup"] > 0
    assert steps["train_masked"]["work"]["images"] == 16
    summary = report["summary"]["0.0625"]
    assert {"sweep_over_naive", "grasp_over_snip", "channel_pruning_s", "speedup_over_mac_reduction"} <= set(summary)
    assert {b["budget"] for b in report["budgets"]} == {"total_seconds", "peak_rss_mb"}  # no budget widths asked
    assert all(b["ok"] for b in report["budgets"])


@pytest.mark.slow
def test_budget_exceeded_exits_nonzero_naming_the_step(tmp_path, capsys):
    code = main(["--widths", "0.0625", "0.125", "--steps", "snip", "grasp", "--budget-widths", "0.125",
                 "--budget", "grasp_over_snip=0.001", "--growth", "--out", str(tmp_path), *TINY])
    assert code == 1
    assert "BUDGET EXCEEDED: grasp (width 0.125): grasp_over_snip" in capsys.readouterr().err
    report = json.loads((tmp_path / "growth-cpu.json").read_text())
    assert report["ok"] is False
    failed = [b for b in report["budgets"] if b["ok"] is False]
    assert [(b["budget"], b["step"], b["width"]) for b in failed] == [("grasp_over_snip", "grasp", 0.125)]
    fits = report["growth"]["fits"]
    assert set(fits) == {"snip", "grasp"} and all("exponent" in f and len(f["seconds"]) == 2 for f in fits.values())
    assert (tmp_path / "growth-cpu.png").stat().st_size > 0
    assert report["growth"]["projection_50k"]["dominant"] in {"snip", "grasp"}


def test_total_budget_names_the_run(tmp_path, capsys):
    code = main(["--widths", "0.0625", "--steps", "magnitude_coo", "--budget", "total_seconds=0.001",
                 "--out", str(tmp_path), *TINY])
    assert code == 1 and "BUDGET EXCEEDED: total: total_seconds" in capsys.readouterr().err

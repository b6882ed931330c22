"""The demo configs end to end at minimal size: every task runs and the report has every section."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from lightning_prune.models.vgg import scaled_channels
from studies import demo, sequence
from tests.helpers import TINY_CLASSIFIER, TINY_WIDTH

pytestmark = pytest.mark.slow  # processes, exports, whole demos: `pytest -m "not slow"` skips them

DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
TINY = [
    "--data.batch_size=32",
    "--data.val_size=64",
    f"--model.channels=[{','.join(map(str, scaled_channels(TINY_WIDTH)))}]",
    f"--model.classifier_width={TINY_CLASSIFIER}",
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
]


def shrink(src: Path, dst: Path) -> None:
    """The demo config, composed with overrides: one or three epochs, stages due at once, small calibration."""
    overrides: dict = {"defaults": [str(src)], "trainer": {"max_epochs": 1},
                       "profile": {"latency_batches": 1, "energy_batches": 1, "train_batches": 1}}
    prune = (yaml.safe_load(src.read_text()).get("prune") or {}).get("init_args", {})
    if src.stem in ("grasp", "snip", "grasp_abs"):
        overrides["prune"] = {"init_args": {"fallback_epochs": [0, 1, 2], "calibration_per_class": 2}}
        overrides["trainer"]["max_epochs"] = 3
    elif src.stem == "channel" or "images_per_class" in prune:
        overrides["prune"] = {"init_args": {"images_per_class": 4, "samples": 200}}
    if src.stem in ("unstructured", "compound"):
        overrides["sweep"] = {"init_args": {"sparsities": [0.0, 0.5, 0.95], "progress": False}}
    dst.write_text(yaml.safe_dump(overrides))


def test_demo_configs_write_a_report_with_every_section(tmp_path, monkeypatch):
    configs = tmp_path / "configs"
    configs.mkdir()
    for src in DEMO_CONFIGS.glob("*.yaml"):
        shrink(src, configs / src.name)
    monkeypatch.chdir(tmp_path)
    # Two-batch models are near chance: one flipped test image moves top-1 by more than the int8 gate's point.
    # In this process (--workers 0): the parallel runner has its own tests, and here starts would cost more than
    # two-batch steps. Without equalization each run is one ONNX export, not two (tests/test_int8.py has it).
    exports = [f"--export-option={o}" for o in ("--max-int8-drop=100", "--no-equalize", "--latency-batches=1",
                                                   "--calibration-images=64", "--eval-batches=2")]
    assert demo.main(["--configs", str(configs), "--workers", "0", *exports, "--", *TINY]) == 0

    results = {p.parts[-3]: json.loads(p.read_text()) for p in Path("logs").glob("*/version_*/results.json")}
    assert sorted(results) == [f"digits_{t}" for t in ("baseline", "channel", "compound", "grasp", "grasp_abs",
                                                           "snip", "unstructured")]
    baseline = "logs/digits_baseline/version_0/checkpoints/last.ckpt"  # the fit; the profiling test is version_1
    assert results["digits_baseline"]["sources"]["ckpt_path"] == baseline
    for task in ("unstructured", "channel"):
        assert results[f"digits_{task}"]["sources"] == {"model.pretrained": baseline,
                                                        "model.pretrained_reference": "run:digits_baseline/version_0"}
    for method in ("grasp", "snip", "grasp_abs"):
        stages = results[f"digits_{method}"]["schedule"]["stages"]
        assert [s["stage"] for s in stages] == [1, 2, 3]
        assert abs(stages[-1]["sparsity"] - 0.9) < 1e-3

    text = (tmp_path / "REPORT.md").read_text()
    variants = [line.split(" | ")[:2] for line in text.splitlines() if line.startswith("| ") and " | " in line]
    for task, variant in [("baseline", "dense"), ("unstructured", "pruned-masked"),
                          ("unstructured", "pruned-sparse-coo"), ("unstructured", "pruned-densified-once"),
                          ("grasp", "pruned-sparse-coo"), ("snip", "pruned-masked"), ("channel", "channel-pruned")]:
        assert [f"| {task}", variant] in variants, (task, variant)
    for section in ("## digits", "### digits: operators that ran", "### digits: per-layer sparsity",
                    "## Where each figure came from"):
        assert section in text
    # The COO model's convolutions densify their weight; only its linear layers run a sparse kernel.
    coo_ops = next(line for line in text.splitlines() if line.startswith("| unstructured | pruned-sparse-coo | `"))
    assert "to_dense" in coo_ops and "sparse" in coo_ops.split(" | ")[-1]
    # Every run handed on: ONNX matching PyTorch in ONNX Runtime, int8 with its accuracy, in the report.
    handoff = text.split("## Hand-off: int8 and ONNX")[1].split("\n## ")[0]
    rows = [line for line in handoff.splitlines() if line.startswith("| digits_")]
    assert len(rows) == 7 and all("yes" in row for row in rows), handoff
    # The chain (channel pruning, then magnitude pruning) starts from the channel run's narrow widths ...
    chain = results["digits_compound"]
    assert [step["task"] for step in chain["lineage"]] == ["channel"] and chain["pruning"]["task"] == "unstructured"
    assert chain["models"][0]["profile"]["params"] == results["digits_channel"]["models"][1]["profile"]["params"]
    # ... and the ladder goes from the dense .pt to its compressed int8 ONNX file, five rungs.
    ladder = text.split("## digits: the compression ladder")[1].split("\n## ")[0]
    rungs = [line.split(" | ")[0] for line in ladder.splitlines() if line.startswith("| ") and "---" not in line]
    assert rungs[1:] == ["| 1. dense fp32", "| 2. channel-pruned", "| 3. + unstructured", "| 4. + int8",
                         "| 5. + compression"]
    assert "Goal (49x smaller" in ladder
    plots = {p.name for p in (tmp_path / "report_plots").glob("*.png")}
    assert {"digits_accuracy_vs_sparsity.png", "digits_latency_size.png",
            "digits_digits_unstructured_sensitivity.png"} <= plots
    for plot in plots:
        assert f"report_plots/{plot}" in text


def test_the_demo_goes_on_past_a_variant_the_int8_gate_refused(tmp_path):
    """A refused export is a result the report shows (exit 2, recorded under `refused`), not a broken demo."""
    import os
    import time

    folder = tmp_path / "digits_snip" / "version_3" / "export"
    folder.mkdir(parents=True)
    started = time.time()
    handoff = folder / "handoff.json"
    handoff.write_text(json.dumps({"variants": [], "refused": [{"variant": "digits_snip_v3", "reason": "int8 gate"}]}))
    assert sequence.refused_by_gate("run:digits_snip", started - 1, tmp_path)
    assert not sequence.refused_by_gate("run:digits_grasp", started - 1, tmp_path)  # another run's export
    os.utime(handoff, (started - 100, started - 100))
    assert not sequence.refused_by_gate("run:digits_snip", started - 1, tmp_path)  # an older export: another failure
    handoff.write_text(json.dumps({"variants": [{"variant": "digits_snip_v3"}], "refused": []}))
    assert not sequence.refused_by_gate("run:digits_snip", started - 1, tmp_path)

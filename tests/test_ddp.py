"""Every task under Lightning DDP: 2 CPU processes over gloo, tiny models, the real launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from lightning_prune.cli import main as cli_main
from lightning_prune.models import VGG
from lightning_prune.pruning.sensitivity import sensitivity_scan
from tests.helpers import TINY_CLASSIFIER, last_checkpoint, tiny_cli_args
from tests.helpers.sweep_rank import sweep_rank

pytestmark = pytest.mark.slow  # each launch picks its own free port, so two can run at once

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "demo"
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
SMALL = ["--trainer.max_epochs=1", "--profile.latency_batches=1", "--profile.energy_batches=1",
         "--profile.train_batches=1", "--data.val_size=64"]
TASK_ARGS = {
    "unstructured": ["--model.pretrained=false", "--sweep.init_args.sparsities=[0.0,0.5,0.95]",
                     "--sweep.init_args.progress=false"],
    "grasp": ["--trainer.max_epochs=3", "--prune.fallback_epochs=[0,1,2]", "--prune.calibration_per_class=2"],
    "channel": ["--model.pretrained=false", "--prune.images_per_class=4", "--prune.samples=200"],
}
VARIANTS = {
    "baseline": ["dense"],
    "unstructured": ["dense", "pruned-masked", "pruned-sparse-coo", "pruned-densified-once"],
    "grasp": ["pruned-masked", "pruned-sparse-coo", "pruned-densified-once"],
    "channel": ["dense", "channel-pruned"],
}


def cli(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m lightning_prune`` in a fresh process, so Lightning's launcher can start rank 1 the same way."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("LIGHTNING_PRUNE_RUN_VERSION", None)
    done = subprocess.run([sys.executable, "-m", "lightning_prune", *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _checksums(run: Path) -> list[str]:
    record = json.loads((run / "distributed.json").read_text())
    assert record["world_size"] == 2 and record["strategy"] == "DDPStrategy"
    return record["state_checksums"]


# 1b under DDP is the staged resume below (GraSP); SNIP shares its callback and rank-agreement path
# (StagedPruning), only its pure scorer differs.
@pytest.mark.parametrize("task", ["baseline", "unstructured", "channel"])
def test_every_task_fits_under_ddp(tmp_path, monkeypatch, task):
    """The baseline's profile comes from `test`, under DDP too; its fit (no pruning callback) is the others' fit."""
    experiment = f"ddp_{task}"
    args = [*tiny_cli_args(tmp_path, experiment), *SMALL, *TASK_ARGS.get(task, []), *DDP]
    run = tmp_path / "logs" / experiment / "version_0"
    if task == "baseline":  # fitted here in one process, tested under DDP
        monkeypatch.chdir(tmp_path)
        assert cli_main(["fit", "--config", str(CONFIGS / "baseline.yaml"), *args[:-len(DDP)]]) == 0
        cli(tmp_path, ["test", "--config", str(CONFIGS / "baseline.yaml"), f"--ckpt_path=run:{experiment}", *args])
        run = run.parent / "version_1"
    else:
        cli(tmp_path, ["fit", "--config", str(CONFIGS / f"{task}.yaml"), *args])
        checksums = _checksums(run)
        assert len(checksums) == 2 and checksums[0] == checksums[1]  # parameters, masks and widths agree
    found = sorted((tmp_path / "logs" / experiment).glob("version_*/results.json"))
    assert found == [run / "results.json"]  # written exactly once
    results = json.loads(found[0].read_text())
    assert results["task"] == task and [m["variant"] for m in results["models"]] == VARIANTS[task]
    assert results["distributed"]["world_size"] == 2
    if task == "channel":
        assert results["models"][1]["channels"] != results["models"][0]["layers"][0].get("out_channels")


def test_a_ddp_staged_fit_resumes_at_the_right_stage(tmp_path, monkeypatch):
    """GraSP stopped after two stages (one process: the stages under DDP are the resumed fit's) and resumed under
    DDP: the third fires once, on both ranks alike."""
    args = [*tiny_cli_args(tmp_path, "ddp_grasp"), *SMALL, *TASK_ARGS["grasp"]]
    monkeypatch.chdir(tmp_path)
    assert cli_main(["fit", "--config", str(CONFIGS / "grasp.yaml"), *args, "--trainer.max_epochs=2",
                     "--prune.record=false"]) == 0
    args += DDP
    ckpt = last_checkpoint(tmp_path, "ddp_grasp")
    done = [s["epoch"] for s in torch.load(ckpt, weights_only=False)["callbacks"]["StagedPruning"]["events"]]
    assert done == [0, 1]
    cli(tmp_path, ["fit", "--config", str(CONFIGS / "grasp.yaml"), *args, f"--ckpt_path={ckpt}"])
    run = tmp_path / "logs" / "ddp_grasp" / "version_1"
    assert sorted((tmp_path / "logs" / "ddp_grasp").glob("version_*/results.json")) == [run / "results.json"]
    results = json.loads((run / "results.json").read_text())
    assert results["task"] == "grasp" and [m["variant"] for m in results["models"]] == VARIANTS["grasp"]
    assert [(s["stage"], s["epoch"]) for s in results["schedule"]["stages"]] == [(1, 0), (2, 1), (3, 2)]
    assert results["models"][0]["profile"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert results["distributed"]["world_size"] == 2
    checksums = _checksums(run)
    assert checksums[0] == checksums[1]


def test_the_sharded_sweep_equals_the_single_process_one():
    model = VGG(10, [4] * 13, TINY_CLASSIFIER)
    g = torch.Generator().manual_seed(3)
    batches = [(torch.randn(8, 3, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(5)]
    single = sensitivity_scan(model, batches, [0.0, 0.5, 0.9])
    with mp.Manager() as manager:
        out = manager.dict()
        port = 29500 + os.getpid() % 1000
        mp.spawn(sweep_rank, args=(port, model.state_dict(), TINY_CLASSIFIER, batches, out), nprocs=2, join=True)
        assert out[0] == out[1]
        for name, curve in single.items():
            assert out[0][name] == pytest.approx(curve, abs=1e-9)

"""A run's life: the model it hands on is the one it measured; runs that stop, collide or fail mislead nobody."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_prune.checkpoint_io import FINISHED_FILE, file_sha256
from lightning_prune.cli import main
from lightning_prune.errors import ConfigError
from lightning_prune.export.cli import main as export_main
from lightning_prune.references import resolve
from lightning_prune.report.cli import build_report
from lightning_prune.run_logger import RunLogger
from lightning_prune.runs import claim_next, grid_experiment
from tests.helpers import last_checkpoint, run_cli_expecting_error, tiny_cli_args

pytestmark = pytest.mark.slow  # processes, exports, whole demos: `pytest -m "not slow"` skips them

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "demo"
BASELINE, SNIP, UNSTRUCTURED = (str(CONFIGS / f"{n}.yaml") for n in ("baseline", "snip", "unstructured"))
QUICK = ["--profile.latency_batches=1", "--profile.energy_batches=1", "--profile.train_batches=1"]
FIRST_IS_BEST = ["--checkpoint.monitor=step", "--checkpoint.mode=min"]  # the best epoch is the first one


def _tiny(tmp_path: Path, experiment: str, epochs: int = 1) -> list[str]:
    return [*tiny_cli_args(tmp_path, experiment), *QUICK, f"--trainer.max_epochs={epochs}"]


def _epoch(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["epoch"]


def _folders(tmp_path: Path, experiment: str) -> list[str]:
    return sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "logs" / experiment).glob("version_*"))


def test_the_final_epoch_is_what_run_references_resume_and_export_get(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = _tiny(tmp_path, "final", epochs=3)
    assert main(["fit", "--config", BASELINE, *args, *FIRST_IS_BEST]) == 0
    ckpts = tmp_path / "logs"
    last = last_checkpoint(tmp_path, "final")
    assert _epoch(last) == 2  # written although epoch 0 is the monitored best
    assert _epoch(resolve("run:final:best", ckpts).path) == 0
    assert resolve("run:final", ckpts).path == last and resolve("run:final", ckpts).finished
    marker = json.loads((last.parent / FINISHED_FILE).read_text())
    assert (marker["epoch"], marker["sha256"]) == (2, file_sha256(last))
    # The profile of `test run:final` names that file.
    assert main(["test", "--config", BASELINE, *args, "--ckpt_path=run:final"]) == 0
    results = json.loads((tmp_path / "logs" / "final" / "version_1" / "results.json").read_text())
    assert results["checkpoint"] == {**{k: marker[k] for k in ("sha256", "epoch", "global_step")},
                                     "path": str(last), "finished": True}
    # Export takes the same file and finds the results.json that measured it.
    out = tmp_path / "deploy"
    assert export_main(["--run", "run:final", "--out", str(out), "--format", "state_dict", "--eval-batches", "1",
                        "--logs", str(tmp_path / "logs")]) == 0
    entry = json.loads((out / "handoff.json").read_text())["variants"][0]
    assert entry["checkpoint"]["sha256"] == marker["sha256"] and entry["checkpoint"]["epoch"] == 2
    assert entry["measured_in"] == str(tmp_path / "logs" / "final" / "version_1" / "results.json")
    # A resume goes on from the final epoch, in a run of its own.
    assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "final", epochs=4), "--ckpt_path=run:final"]) == 0
    resumed = last_checkpoint(tmp_path, "final", version=2)
    assert _epoch(resumed) == 3 and torch.load(resumed, weights_only=False)["global_step"] == 8


@pytest.mark.xdist_group("processes")  # starts processes whose timing matters: one worker runs them in turn
def test_a_killed_fit_is_skipped_by_run_references_and_kept_out_of_the_report(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "killed")]) == 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    slow = subprocess.Popen([sys.executable, "-m", "lightning_prune", "fit", "--config", BASELINE,
                             *_tiny(tmp_path, "killed", epochs=500)], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = last_checkpoint(tmp_path, "killed", version=1)
    deadline = time.time() + 120
    while not partial.is_file() and time.time() < deadline and slow.poll() is None:
        time.sleep(0.2)
    time.sleep(0.5)  # the first save has landed (the file is renamed into place whole)
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    assert partial.is_file() and not (partial.parent / FINISHED_FILE).exists()
    resolved = resolve("run:killed", tmp_path / "logs")
    assert resolved.path == last_checkpoint(tmp_path, "killed", version=0)
    assert resolved.notes == ["killed/version_1 did not finish; using killed/version_0"]
    explicit = resolve("run:killed/version_1", tmp_path / "logs")
    assert explicit.path == partial and explicit.finished is False and "did not finish" in explicit.notes[0]
    # Testing it anyway is allowed (with a note), but the report keeps it out of the tables.
    assert main(["test", "--config", BASELINE, *_tiny(tmp_path, "killed"), "--ckpt_path=run:killed/version_1"]) == 0
    assert "note: ckpt_path: killed/version_1 did not finish" in capsys.readouterr().err
    results = json.loads((tmp_path / "logs" / "killed" / "version_2" / "results.json").read_text())
    assert results["checkpoint"]["finished"] is False
    text = build_report(tmp_path / "logs", tmp_path / "REPORT.md")
    left_out = text.split("## Runs left out of the tables")[1]
    assert "killed/version_2/results.json" in left_out and "did not finish" in left_out
    assert "| baseline |" not in text.split("## Runs left out")[0]  # it is no row, and no reference


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.xdist_group("processes")  # starts processes whose timing matters: one worker runs them in turn
def test_two_launches_at_once_one_of_them_two_nodes_get_distinct_versions(tmp_path):
    """A 2-node DDP job (one process per node, as an external launcher starts them) and a single run, together."""
    args = [*_tiny(tmp_path, "together"), "--trainer.accelerator=cpu"]
    base = {**os.environ, "PYTHONPATH": str(ROOT)}
    node = {**base, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    ddp = ["--trainer.strategy=ddp", "--trainer.num_nodes=2", "--trainer.devices=1"]
    command = [sys.executable, "-m", "lightning_prune", "fit", "--config", BASELINE, *args]
    procs = [subprocess.Popen([*command, *ddp], cwd=tmp_path, env={**node, "NODE_RANK": str(rank)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    procs.append(subprocess.Popen(command, cwd=tmp_path, env=base, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    runs = {}
    for folder in sorted((tmp_path / "logs" / "together").glob("version_*")):
        runs[folder.name] = json.loads((folder / "distributed.json").read_text())["world_size"]
        assert (folder / "checkpoints" / FINISHED_FILE).is_file()
    assert sorted(runs.values()) == [1, 2] and len(runs) == 2  # two runs, each whole, nothing shared


def test_a_version_is_never_reused_except_by_a_resume_of_that_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = _tiny(tmp_path, "owned")
    assert main(["fit", "--config", BASELINE, *args]) == 0
    err = run_cli_expecting_error(["fit", "--config", BASELINE, *args, "--run.version=0"], capsys)
    assert "run.version=0: owned/version_0 exists already" in err
    ckpt = last_checkpoint(tmp_path, "owned")
    assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "owned", 2), "--run.version=0",
                 f"--ckpt_path={ckpt}"]) == 0  # the resume of that very run continues in its folders
    assert _folders(tmp_path, "owned") == ["logs/owned/version_0"]
    assert _epoch(ckpt) == 1 and (ckpt.parent / FINISHED_FILE).is_file()


def test_concurrent_claims_never_share_a_version(tmp_path):
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: claim_next(tmp_path / "exp"), range(32)))
    assert sorted(got) == list(range(32))


def test_only_rank_zero_claims_a_folder_and_a_taken_version_is_seen(tmp_path, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    other = RunLogger(tmp_path, "exp")
    assert other.version == 0 and not (tmp_path / "exp").exists() and not other.created  # rank 0's is broadcast
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    first, second = RunLogger(tmp_path, "exp"), RunLogger(tmp_path, "exp")
    assert (first.version, second.version) == (0, 1) and first.created and (tmp_path / "exp" / "version_1").is_dir()
    again = RunLogger(tmp_path, "exp", version=1)
    assert again.version == 1 and again.existed and not again.created
    fresh = RunLogger(tmp_path, "exp", version=5)
    assert fresh.version == 5 and fresh.created and not fresh.existed


def _relabelled(tmp_path: Path, task: str) -> Path:
    ckpt = torch.load(last_checkpoint(tmp_path, "dense"), map_location="cpu", weights_only=False)
    ckpt["pruning"] = {"task": task, "method": task}
    path = tmp_path / f"{task}.ckpt"
    torch.save(ckpt, path)
    return path


def test_a_checkpoint_of_one_task_is_not_resumed_or_tested_under_another(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "dense")]) == 0
    grasp = _relabelled(tmp_path, "grasp")
    for command in ("fit", "test"):
        err = run_cli_expecting_error([command, "--config", BASELINE, *_tiny(tmp_path, "relabel", 2),
                                       f"--ckpt_path={grasp}"], capsys)
        assert "pruned by task 'grasp' but the config is of task 'baseline'" in err and "Traceback" not in err
    dense = last_checkpoint(tmp_path, "dense")
    err = run_cli_expecting_error(["fit", "--config", UNSTRUCTURED, *_tiny(tmp_path, "relabel", 2),
                                   f"--ckpt_path={dense}"], capsys)
    assert "task 'baseline' but the config is of task 'unstructured'" in err and "model.pretrained" in err
    assert _folders(tmp_path, "relabel") == []


def test_exports_are_whole_and_name_each_run_apart(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "exp")]) == 0
    common = ["--eval-batches", "1", "--latency-batches", "1", "--calibration-images", "32",
              "--logs", str(tmp_path / "logs"),
              "--max-int8-drop", "100"]  # two-batch models: the int8 gate is not what this test is about
    out, plain = tmp_path / "deploy", ["--format", "state_dict"]
    assert export_main(["--run", "run:exp/version_0", "--out", str(out), "--quantize", *plain, *common]) == 0
    assert export_main(["--run", "run:exp/version_1", "--out", str(out), *plain, *common]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["exp_v0.int8.pt", "exp_v0.json", "exp_v0.pt", "exp_v1.json", "exp_v1.pt", "handoff.json",
                     "handoff.md"]
    # A re-export without --quantize leaves no int8 file behind that handoff.json does not list.
    assert export_main(["--run", "run:exp/version_0", "--out", str(out), *plain, *common]) == 0
    handoff = json.loads((out / "handoff.json").read_text())
    listed = {Path(f).name for v in handoff["variants"] for f in v["files"].values()}
    assert listed | {"handoff.json", "handoff.md"} == {p.name for p in out.iterdir()}
    # A failed (or killed) export leaves the folder exactly as it was.
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        Path(args[1]).write_bytes(b"")  # the half-written file a kill leaves
        raise KeyboardInterrupt

    monkeypatch.setattr("lightning_prune.export.pipeline.export_onnx", broken)
    with pytest.raises(KeyboardInterrupt):
        export_main(["--run", "run:exp/version_0", "--out", str(out), *common])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # --out that cannot be a folder is one line.
    for bad in (out / "handoff.json", out / "handoff.json" / "sub"):
        assert export_main(["--run", "run:exp", "--out", str(bad), *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: --out:") and "Traceback" not in "\n".join(err)


def test_best_reads_the_runs_own_folder_and_needs_a_monitor(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "best", 2), *FIRST_IS_BEST]) == 0
    assert main(["fit", "--config", SNIP, *_tiny(tmp_path, "nomonitor", 1), "--prune.fallback_epochs=[0,0,0]",
                 "--prune.calibration_per_class=2", "--prune.record=false"]) == 0
    ckpts = tmp_path / "logs"
    with pytest.raises(ConfigError, match="monitored no metric"):
        resolve("run:nomonitor:best", ckpts)
    copy = tmp_path / "copy"
    shutil.copytree(ckpts / "best", copy / "best")
    shutil.rmtree(ckpts / "best")  # a copy, and the original gone: the copy resolves to its own files
    best = resolve("run:best:best", copy).path
    assert best.parent == copy / "best" / "version_0" / "checkpoints" and _epoch(best) == 0


def test_refused_runs_leave_no_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = ["--sweep.init_args.sparsities=[0.0,0.5]", "--sweep.init_args.progress=false", "--model.pretrained=false"]
    refusals = [
        (UNSTRUCTURED, [*sweep, "--prune.target_sparsity=1.5"], "target_sparsity"),
        (SNIP, ["--prune.method=GRASP"], "prune.method"),
        (SNIP, ["--prune.fractions=[0.5,0.5,1.0]"], "strictly increasing"),
        (BASELINE, ["--data.val_size=100000"], "val_size"),
        (BASELINE, ["--model.channels=[4,4]"], "model.channels"),
    ]
    for config, extra, words in refusals:
        err = run_cli_expecting_error(["fit", "--config", config, *_tiny(tmp_path, "refused"), *extra], capsys)
        assert words in err and "Traceback" not in err, err
    assert _folders(tmp_path, "refused") == [] and not list((tmp_path / "logs" / "refused").glob("*"))


def test_folders_that_cannot_be_written_are_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for option in ("--run.logs",):
        argv = ["fit", "--config", BASELINE, *_tiny(tmp_path, "unwritable"), f"{option}={blocker / 'sub'}"]
        err = run_cli_expecting_error(argv, capsys)
        assert f"error: {option.removeprefix('--')}: cannot create" in err and "Epoch 0" not in err, err
    assert _folders(tmp_path, "unwritable") == []
    err = run_cli_expecting_error(["fit", "--config", BASELINE, *_tiny(tmp_path, "root"),
                                   f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert "trainer.default_root_dir" in err and "--run.logs" in err


def test_the_report_counts_only_recorded_seeds_and_survives_bad_models(tmp_path):
    logs = tmp_path / "logs"
    base = json.loads(next((ROOT / "docs" / "results" / "digits_baseline").rglob("results.json")).read_text())
    for version, seed in enumerate([0, 1, None]):
        data = {k: v for k, v in base.items() if k != "seed"}
        data["config_key"], data["created"] = "same", f"2026-01-0{version + 1}T00:00:00+00:00"
        if seed is not None:
            data["seed"] = seed
        folder = logs / "digits_baseline" / f"version_{version}"
        folder.mkdir(parents=True)
        (folder / "results.json").write_text(json.dumps(data))
    bad = logs / "broken" / "version_0"
    bad.mkdir(parents=True)
    (bad / "results.json").write_text(json.dumps({**base, "models": {"variant": "dense"}}))
    text = build_report(logs, tmp_path / "REPORT.md")
    assert "(n=2)" in text and "(n=3)" not in text
    assert "digits_baseline/version_2/results.json`: it records no seed" in text
    assert "broken/version_0/results.json" in text.split("## Runs with missing or invalid fields")[1]


def test_budget_grid_names_keep_the_precision_they_need():
    assert [grid_experiment("e", t) for t in (0.7, 0.9, 0.995, 0.999)] == ["e_t70", "e_t90", "e_t99.5", "e_t99.9"]

"""Run identity: each run owns its folders, tasks chain by reference, results record what ran, one-line errors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from lightning_prune.checkpoint_io import FINISHED_FILE
from lightning_prune.cli import main
from lightning_prune.config_files import expand_configs
from lightning_prune.errors import ConfigError
from lightning_prune.references import resolve
from lightning_prune.report.cli import main as report_main
from lightning_prune.runs import Run, claim_next
from tests.helpers import fake_cifar, last_checkpoint, run_cli_expecting_error, tiny_cli_args

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASELINE = str(CONFIGS / "demo" / "baseline.yaml")
UNSTRUCTURED = str(CONFIGS / "demo" / "unstructured.yaml")
SNIP = str(CONFIGS / "demo" / "snip.yaml")
CHANNEL = str(CONFIGS / "demo" / "channel.yaml")
ONE_EPOCH = ["--trainer.max_epochs=1", "--profile.latency_batches=1", "--profile.energy_batches=1",
             "--profile.train_batches=1"]
SMALL_SWEEP = ["--sweep.init_args.sparsities=[0.0,0.5,0.95]", "--sweep.init_args.progress=false"]


def _tiny(tmp_path: Path, experiment: str) -> list[str]:
    return [*tiny_cli_args(tmp_path, experiment), *ONE_EPOCH]


def _results(tmp_path: Path, experiment: str, version: int = 0) -> dict:
    return json.loads((tmp_path / "logs" / experiment / f"version_{version}" / "results.json").read_text())


def test_versions_never_collide_and_references_pick_the_newest(tmp_path):
    logs = ckpts = tmp_path / "logs"
    first, second = (Run("exp", claim_next(logs / "exp"), logs) for _ in range(2))
    assert (first.version, second.version) == (0, 1) and first.log_dir.is_dir() and second.log_dir.is_dir()
    for run in (first, second):
        run.checkpoint_dir.mkdir(parents=True)
        (run.checkpoint_dir / "last.ckpt").write_bytes(b"x")
        (run.checkpoint_dir / FINISHED_FILE).write_text("{}")
    (logs / "exp" / "version_2").mkdir()  # a run that never saved: not a candidate
    assert resolve("run:exp", ckpts).path == second.checkpoint_dir / "last.ckpt"
    assert resolve("run:exp/version_0", ckpts).path == first.checkpoint_dir / "last.ckpt"
    assert resolve("plain/path.ckpt", ckpts).path == Path("plain/path.ckpt")
    for ref, words in (("run:nope", ["no finished run of experiment 'nope'", "exp"]),
                       ("run:exp/version_7", ["no version_7", "versions with one: 0, 1"]),
                       ("run:exp:newest", ["run:<experiment>[/version_N][:last|:best]"])):
        with pytest.raises(ConfigError) as err:
            resolve(ref, ckpts)
        assert all(w in str(err.value) for w in words), str(err.value)


def test_configs_compose_in_order_and_once():
    argv = expand_configs(["fit", "--config", str(CONFIGS / "cifar100" / "snip.yaml"), "--x=1"])
    files = [Path(a).relative_to(CONFIGS).as_posix() for a in argv[2::2] if a.endswith(".yaml")]
    assert files == ["base.yaml", "datasets/cifar100.yaml", "tasks/snip.yaml", "cifar100/snip.yaml"]
    assert argv[-1] == "--x=1"


@pytest.mark.slow
def test_a_rerun_baseline_is_the_one_the_next_task_prunes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "digits_baseline")]) == 0
    argv = ["fit", "--config", UNSTRUCTURED, *_tiny(tmp_path, "tiny_unstructured"), *SMALL_SWEEP,
            "--prune.target_sparsity=0.8"]
    assert main(argv) == 0
    results = _results(tmp_path, "tiny_unstructured")
    assert results["sources"]["model.pretrained"] == str(last_checkpoint(tmp_path, "digits_baseline", 1))
    assert results["sources"]["model.pretrained_reference"] == "run:digits_baseline"
    assert results["pruning"]["target_sparsity"] == 0.8  # --prune.* reaches the callback
    masked = next(m for m in results["models"] if m["variant"] == "pruned-masked")
    assert masked["profile"]["sparsity"] == pytest.approx(0.8, abs=1e-4)
    # The run's own artifacts sit in its folders and nowhere else.
    logs = tmp_path / "logs" / "tiny_unstructured" / "version_0"
    ckpts = logs / "checkpoints"
    assert Path(results["artifacts"]["checkpoint"]).parent == ckpts
    measured = results["checkpoint"]  # the file these figures describe: the fit's final last.ckpt
    assert measured["path"] == results["artifacts"]["checkpoint"] and measured["finished"] is True
    assert measured["epoch"] == 0 and len(measured["sha256"]) == 64
    assert Path(results["artifacts"]["sparse_coo"]).parent == logs
    assert list(logs.glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_a_renamed_experiment_moves_every_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "renamed")]) == 0
    assert last_checkpoint(tmp_path, "renamed").is_file()
    assert not (tmp_path / "logs" / "digits_baseline").exists()
    err = run_cli_expecting_error(["fit", "--config", BASELINE, *_tiny(tmp_path, "renamed"),
                                   "--trainer.logger.init_args.name=other"], capsys)
    assert "run.experiment" in err and "--run.experiment=other" in err and "Traceback" not in err


def test_the_logger_that_names_the_run_folder_cannot_be_turned_off_or_doubled(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    csv = "--trainer.logger+=lightning.pytorch.loggers.CSVLogger"
    for extra, words in ((["--trainer.logger=false"], "trainer.logger=false: a run's folder and version come from"),
                         ([csv, "--trainer.logger.save_dir=x"], "a CSVLogger or a second TensorBoardLogger")):
        err = run_cli_expecting_error(["fit", "--config", BASELINE, *_tiny(tmp_path, "nolog"), *extra], capsys)
        assert words in err and "Traceback" not in err, err[-1500:]
    assert not (tmp_path / "logs" / "nolog").exists()


@pytest.mark.slow
def test_a_resumed_checkpoint_keeps_its_method_and_target(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*_tiny(tmp_path, "tiny_snip"), "--model.pretrained=false", "--prune.fallback_epochs=[0,0,0]",
            "--prune.calibration_per_class=2", "--prune.record=false"]
    assert main(["fit", "--config", SNIP, *args]) == 0
    ckpt = last_checkpoint(tmp_path, "tiny_snip")
    assert torch.load(ckpt, weights_only=False)["pruning"]["method"] == "snip"
    for option, words in (("--prune.method=grasp", ["task 'snip'", "task 'grasp'"]),
                          ("--prune.target_sparsity=0.5", ["target_sparsity=0.9", "target_sparsity=0.5"])):
        argv = ["fit", "--config", SNIP, f"--ckpt_path={ckpt}", *args, "--trainer.max_epochs=2", option]
        err = run_cli_expecting_error(argv, capsys)
        assert all(w in err for w in words) and "Traceback" not in err, err[-1500:]


@pytest.mark.slow
def test_testing_a_pruned_checkpoint_records_its_real_task(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = [*_tiny(tmp_path, "tiny_channel"), "--model.pretrained=false", "--prune.images_per_class=4",
            "--prune.samples=200"]
    assert main(["fit", "--config", CHANNEL, *args]) == 0
    ckpt = last_checkpoint(tmp_path, "tiny_channel")
    tested = [f"--ckpt_path={ckpt}", *_tiny(tmp_path, "tested"), "--model.pretrained=false"]
    assert main(["test", "--config", CHANNEL, *tested]) == 0
    results = _results(tmp_path, "tested")
    assert results["task"] == "channel" and results["pruning"]["method"] == "lasso"
    assert [m["variant"] for m in results["models"]] == ["channel-pruned"]
    err = run_cli_expecting_error(["test", "--config", CHANNEL, *tested, "--profile.task=baseline"], capsys)
    assert "profile.task='baseline'" in err and "'channel'" in err
    err = run_cli_expecting_error(["test", "--config", BASELINE, *tested], capsys)  # never re-labelled
    assert "pruned by task 'channel' but the config is of task 'baseline'" in err


@pytest.mark.slow
def test_bad_files_and_options_are_one_line_and_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    assert main(["fit", "--config", BASELINE, *_tiny(tmp_path, "good")]) == 0
    good = last_checkpoint(tmp_path, "good")
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    cases = [
        (["fit", "--config", BASELINE, f"--model.pretrained={text}"], ["model.pretrained", "notes.txt"]),
        (["fit", "--config", BASELINE, f"--model.pretrained={truncated}"], ["model.pretrained", "truncated.ckpt"]),
        (["test", "--config", BASELINE, f"--ckpt_path={truncated}"], ["ckpt_path", "not a readable checkpoint"]),
        (["fit", "--config", BASELINE, "--trainer.max_epochs=-3"], ["trainer:", "max_epochs", "-3"]),
        (["fit", "--config", BASELINE, "--trainer.accelerator=gpu"], ["trainer:", "gpu"]),
        (["fit", "--config", UNSTRUCTURED, "--model.pretrained=run:missing"], ["run:missing", "no finished run"]),
    ]
    for argv, words in cases:
        err = run_cli_expecting_error([*argv[:3], *_tiny(tmp_path, "bad"), *argv[3:]], capsys)
        lines = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and all(w in lines[0] for w in words) and "Traceback" not in err, err[-1500:]
    assert not (tmp_path / "logs" / "bad").exists() or not any((tmp_path / "logs" / "bad").iterdir())


@pytest.mark.slow
def test_a_truncated_cifar_batch_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folder = fake_cifar(tmp_path / "cifar")
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    (folder / "data_batch_3").write_bytes((folder / "data_batch_3").read_bytes()[:100])
    argv = ["fit", "--config", BASELINE, *_tiny(tmp_path, "cifar"), "--data.dataset=cifar10",
            f"--data.data_dir={tmp_path / 'cifar'}", "--data.download=false", "--data.verify_checksums=false",
            "--data.val_size=8"]
    err = run_cli_expecting_error(argv, capsys)
    assert "data.data_dir" in err and "truncated or corrupt" in err and "Traceback" not in err, err[-1500:]


def test_report_lists_unreadable_results_and_checks_out_first(tmp_path, capsys):
    logs = tmp_path / "logs"
    (logs / "broken" / "version_0").mkdir(parents=True)
    (logs / "broken" / "version_0" / "results.json").write_text('{"task": "baseline", "models": [')
    assert report_main(["--logs", str(logs), "--out", str(tmp_path / "R.md")]) == 0
    text = (tmp_path / "R.md").read_text()
    assert "Runs with missing or invalid fields" in text and "broken/version_0/results.json" in text
    shutil.rmtree(tmp_path / "report_plots")
    with pytest.raises(SystemExit) as exit_:
        report_main(["--logs", str(logs), "--out", str(tmp_path)])
    assert exit_.value.code == 2 and "--out" in capsys.readouterr().err
    assert not (tmp_path / "report_plots").exists()  # nothing drawn before the check


def test_help_describes_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    text = capsys.readouterr().out
    text = " ".join(text.split())
    for words in ("Name of the experiment", "Test batches timed", "Peak learning rate",
                  "Training images (eval transforms) held out", "The 13 conv widths", "--prune.help"):
        assert words in text, words
    with pytest.raises(SystemExit):
        main(["fit", "--prune.help", "lightning_prune.callbacks.MagnitudePruning"])
    assert "Share of conv and linear weights zeroed" in " ".join(capsys.readouterr().out.split())

"""The studies: each plan's steps and what they need, and the runner that starts them in order."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studies import budget, demo, evidence, procs, runner, runs
from studies.runner import Step

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = re.compile(r"\{([^{}@]+)@(\d+)\}")


def _references(step: Step) -> set[tuple[str, int]]:
    return {(m[1], int(m[2])) for argv in step.commands for arg in argv for m in REFERENCE.finditer(arg)}


def _check_plan(steps: list[Step], outside: set[tuple[str, int]] = frozenset()) -> None:
    """Labels are unique; a step names only runs it waits for, made earlier in the plan (or before it)."""
    assert len({s.label for s in steps}) == len(steps)
    made: set[tuple[str, int]] = set(outside)
    for step in steps:
        assert set(step.needs) <= made | set(step.makes), (step.label, step.needs)
        assert _references(step) <= set(step.needs) | set(step.makes), step.label
        made |= set(step.makes)


def test_the_demo_plan_prunes_each_seeds_own_baseline_and_reports_last():
    steps = demo.plan(seeds=2, export=["--max-int8-drop=2"])
    _check_plan(steps)
    assert steps[-1].label == "report" and len(steps[-1].needs) == 14  # 7 experiments x 2 seeds
    by_label = {s.label: s for s in steps}
    assert _references(by_label["task1a_unstructured_s1"]) == {("digits_baseline", 1), ("digits_unstructured", 1)}
    exports = [argv for s in steps for argv in s.commands if argv[0] == "export"]
    assert len(exports) == 14 and all(argv[-1] == "--max-int8-drop=2" for argv in exports)
    assert not any(argv[0] == "export" for s in demo.plan(export=None) for argv in s.commands)
    with pytest.raises(SystemExit):
        demo.main(["--seeds", "0"])


def test_the_budget_plan_runs_every_target_per_seed_from_that_seeds_baseline():
    steps = budget.grid_plan(ROOT / "configs" / "demo", ["snip", "unstructured"], [0.7, 0.9], 2)
    _check_plan(steps, outside={("digits_baseline", 0), ("digits_baseline", 1)})
    snip = [s.commands[0][3:] for s in steps if s.label.startswith("digits_snip")]
    assert snip == [[f"--prune.target_sparsity={t}", f"--run.experiment=digits_snip_t{round(100 * t)}",
                     f"--seed_everything={s}"] for s in (0, 1) for t in (0.7, 0.9)]
    unstructured = [s for s in steps if s.label.startswith("digits_unstructured")]
    assert [s.needs for s in unstructured] == [[("digits_baseline", s)] for s in (0, 0, 1, 1)]
    for argv in (["--grid", "0.9", "0.9"], ["--grid", "1.0"], ["--methods", "nope"]):
        with pytest.raises(SystemExit):
            budget.main(argv)


def test_the_evidence_plan_keeps_whole_comparisons_and_waits_for_what_it_prunes():
    steps = evidence.plan(seeds=3, headline=5)
    _check_plan(steps)
    labels = [s.label for s in steps]
    assert labels[:4] == ["cifar10subset_baseline_s0", "cifar10subset_baseline_s0_test", "cifar10subset_dense_s0",
                          "cifar10subset_dense_s0_test"]
    headline = [lab for lab in labels if re.fullmatch(r"cifar10subset_unstructured_global_s\d", lab)]
    controls = [lab for lab in labels if re.fullmatch(r"cifar10subset_unstructured_uniform_s\d", lab)]
    assert len(headline) == 5 and len(controls) == 3
    assert labels.count("cifar10subset_channel_t70_s0") == 1  # the ladder's channel run is also a budget run
    exports = [s for s in steps if s.label.endswith("_export")]
    assert len(exports) == 3 * len(evidence.LADDER_EXPORTS) and all(not s.makes for s in exports)
    finetuned = {s.label: s for s in steps if s.label.startswith(f"{evidence.FINETUNED}_s")}
    assert sorted(finetuned) == sorted(f"{evidence.FINETUNED}_s{s}{t}" for s in range(3) for t in ("", "_test"))
    fit1 = finetuned[f"{evidence.FINETUNED}_s1"]
    assert fit1.needs == [(evidence.BASELINE, 1)]
    assert f"--model.pretrained={{{evidence.BASELINE}@1}}" in fit1.commands[0]
    assert labels.index(f"{evidence.FINETUNED}_s0") > labels.index(f"{evidence.BASELINE}_s0_test")


def _run(logs: Path, experiment: str, version: int, seed: int, done: bool) -> None:
    folder = logs / experiment / f"version_{version}"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.yaml").write_text(f"seed_everything: {seed}\n")
    if done:
        (folder / "checkpoints" / "finished.json").write_text("{}")


def test_a_seed_reference_names_that_seeds_newest_finished_run(tmp_path, monkeypatch):
    monkeypatch.setattr(runs, "LOGS", tmp_path / "logs")
    for version, seed, done in ((0, 0, True), (1, 1, True), (2, 0, True), (3, 0, False)):
        _run(tmp_path / "logs", "e", version, seed, done)
    named = runs.name_seed_runs(["--a={e@0}", "--b=x{e@1}y", "plain"])
    assert named == ["--a=run:e/version_2", "--b=xrun:e/version_1y", "plain"]
    with pytest.raises(RuntimeError, match="e has no finished run of seed 2"):
        runs.name_seed_runs(["{e@2}"])


def _fake_spawn(order: Path):
    """Each step runs ``python -c``: it appends its label to ``order`` and exits with the code it names."""
    def spawn(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
        label, code = json.loads(command[-1])[0]
        script = f"open({str(order)!r}, 'a').write({label!r} + '\\n'); raise SystemExit({int(code)})"
        return subprocess.Popen([sys.executable, "-c", script])
    return spawn


def test_the_runner_starts_a_step_after_the_runs_it_needs_and_stops_after_a_failure(tmp_path, monkeypatch):
    order = tmp_path / "order"
    monkeypatch.setattr(procs, "spawn", _fake_spawn(order))
    steps = [Step("b", [["b", "0"]], needs=[("a", 0)]), Step("a", [["a", "0"]], makes=[("a", 0)]),
             Step("c", [["c", "0"]])]
    assert runner.run(steps, tmp_path / "study", workers=1) == 0
    assert order.read_text().split() == ["a", "b", "c"]  # b, listed first, waited for a
    timing = json.loads((tmp_path / "study" / "timing.json").read_text())
    assert [s["step"] for s in timing["steps"]] == ["a", "b", "c"] and timing["wall_seconds"] >= 0
    order.unlink()
    failing = [Step("a", [["a", "3"]], makes=[("a", 0)]), Step("b", [["b", "0"]], needs=[("a", 0)]),
               Step("c", [["c", "0"]])]
    assert runner.run(failing, tmp_path / "study", workers=1) == 1
    assert order.read_text().split() == ["a"]  # nothing new starts after a failure
    order.unlink()
    assert runner.run(failing, tmp_path / "study", workers=1, keep_going=True) == 1
    assert order.read_text().split() == ["a", "c"]  # keep_going: only what needs the failed run waits


def test_a_resume_skips_what_is_done(tmp_path, monkeypatch):
    order = tmp_path / "order"
    monkeypatch.setattr(procs, "spawn", _fake_spawn(order))
    steps = [Step("a", [["a", "0"]], makes=[("a", 0)], done=lambda: True),
             Step("b", [["b", "0"]], needs=[("a", 0)], done=lambda: False)]
    assert runner.run(steps, tmp_path / "study", workers=2, resume=True) == 0
    assert order.read_text().split() == ["b"]


def test_a_killed_runner_takes_its_steps_with_it(tmp_path):
    driver = ("import sys, time; from pathlib import Path; from studies import procs as p; "
              "c = p.spawn([sys.executable, '-c', 'import time; time.sleep(60)  # studies.sequence'], "
              f"Path({str(tmp_path / 'step.log')!r}), {{}}); print(c.pid, flush=True); time.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", driver], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    child = int(parent.stdout.readline())
    assert procs.alive(child)
    parent.kill()  # kill -9: no handler runs, yet the step must not train on
    parent.wait()
    deadline = time.time() + 10
    while procs.alive(child) and time.time() < deadline:
        time.sleep(0.1)
    assert not procs.alive(child)


def test_a_resume_waits_for_a_step_that_still_runs(tmp_path, monkeypatch, capsys):
    go = tmp_path / "go"  # the step ends once the runner has decided to wait for it (its first pause), not on a timer
    still = subprocess.Popen([sys.executable, "-c", f"import os, time\nend = time.time() + 60\n"
                              f"while not os.path.exists({str(go)!r}) and time.time() < end: time.sleep(0.05)"
                              "  # studies.sequence"])
    pause, deadline = time.sleep, time.time() + 10
    while not procs.alive(still.pid) and time.time() < deadline:  # until it runs its own command line
        pause(0.05)

    def first_pause(seconds: float) -> None:
        go.touch()
        pause(min(seconds, 0.2))

    monkeypatch.setattr(runner.time, "sleep", first_pause)
    step = Step("cifar10subset_unstructured_s0", [["fit", "--config", "x.yaml"]], done=lambda: False)
    folder = tmp_path / "logs" / "evidence"
    procs.Registry(folder / "running.json").add(step.label, still.pid)
    started = []
    monkeypatch.setattr(procs, "spawn", lambda *args: started.append(args))
    assert runner.run([step], folder, workers=1, resume=True) == 1  # it ended without finishing its run
    assert still.wait() == 0 and started == [] and "still runs (pid" in capsys.readouterr().out
    assert procs.Registry(folder / "running.json").read() == {}


def test_without_workers_the_steps_run_in_this_process_in_order(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(runner, "run_sequence", lambda commands: ran.append(commands[0][0]) or int(commands[0][1]))
    steps = [Step("b", [["b", "0"]], needs=[("a", 0)]), Step("a", [["a", "0"]], makes=[("a", 0)]),
             Step("c", [["c", "4"]]), Step("d", [["d", "0"]])]
    assert runner.run(steps, tmp_path / "study", workers=0) == 1
    assert ran == ["a", "b", "c"]  # b after the run it needs; nothing after c failed

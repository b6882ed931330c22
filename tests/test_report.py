"""The report on a fixture set of runs: latest wins, nulls show as n/a, broken runs do not break it."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from lightning_prune.report.cli import build_report, main
from lightning_prune.report.collect import load_runs, merge_runs, seed_groups
from lightning_prune.report.plots import _removed, accuracy_series

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_prune"


def _model(variant: str, top1: float, sparsity: float, energy_cpu: float | None, latency: float = 10.0) -> dict:
    return {
        "variant": variant,
        "accuracy": {"test_top1": top1, "test_top5": 99.0, "train_top1": None, "train_top5": None},
        "profile": {
            "model_size_mb": 60.0 * (1 - sparsity) + 1, "params": 1000, "nonzero_params": int(1000 * (1 - sparsity)),
            "sparsity": sparsity, "macs": 314_000_000, "latency_ms": latency, "latency_ms_std": 1.0,
            "batch_size": 256, "batches": 10, "peak_memory_mb": 100.0, "avg_memory_mb": 70.0,
            "memory_device": "cpu", "energy_mj": {"cpu": energy_cpu, "dram": None, "gpu": None},
            "energy_note": None if energy_cpu is not None else "cpu, dram: no RAPL interface",
        },
        "layers": [{"name": "features.0", "params": 1728, "sparsity": sparsity, "shape": [64, 3, 3, 3]}],
    }


def _write(logs: Path, experiment: str, version: int, task: str, created: str, models: list[dict]) -> Path:
    path = logs / experiment / f"version_{version}" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({
        "task": task, "dataset": "cifar10", "model": "vgg16_bn", "created": created,
        "command": f"lightning-prune fit --config configs/cifar10/{task}.yaml",
        "environment": {"device": "cpu (2 threads)", "torch": "2.14.1", "lightning": "2.6.6"},
        "models": models, "artifacts": {},
    }))
    return path


def fixture_logs(logs: Path) -> None:
    _write(logs, "cifar10_baseline", 0, "baseline", "2026-01-01T00:00:00+00:00", [_model("dense", 94.0, 0.0, 500.0)])
    _write(logs, "cifar10_unstructured", 0, "unstructured", "2026-01-01T00:00:00+00:00",
           [_model("pruned-masked", 50.0, 0.5, None)])  # an older duplicate: must be hidden
    _write(logs, "cifar10_unstructured", 1, "unstructured", "2026-01-02T00:00:00+00:00",
           [_model("dense", 94.0, 0.0, None), _model("pruned-masked", 92.5, 0.9, None, latency=12.0)])
    data = json.loads((logs / "cifar10_unstructured" / "version_1" / "results.json").read_text())
    data["models"][1]["profile"]["operators"] = [
        {"name": "aten::mkldnn_convolution", "calls": 13, "self_cpu_ms": 8.0, "share": 0.8},
        {"name": "aten::addmm", "calls": 3, "self_cpu_ms": 1.0, "share": 0.1},
        {"name": "aten::to_dense", "calls": 13, "self_cpu_ms": 0.1, "share": 0.01},
    ]
    (logs / "cifar10_unstructured" / "version_1" / "results.json").write_text(json.dumps(data))
    broken = _write(logs, "cifar10_channel", 0, "channel", "2026-01-03T00:00:00+00:00",
                    [_model("channel-pruned", 91.0, 0.0, None)])
    data = json.loads(broken.read_text())
    del data["models"][0]["profile"]["latency_ms"]
    broken.write_text(json.dumps(data))


def test_report_tables_from_fixture_runs(tmp_path):
    logs = tmp_path / "logs"
    fixture_logs(logs)
    text = build_report(logs, tmp_path / "REPORT.md")
    results_table = text.split("###")[0]
    tasks = ("| baseline", "| unstructured", "| channel")
    rows = [line for line in results_table.splitlines() if line.startswith(tasks)]
    assert [r.split(" | ")[1] for r in rows] == ["dense", "dense", "pruned-masked", "channel-pruned"]
    pruned = next(r for r in rows if "pruned-masked" in r).strip("| ").split(" | ")
    assert pruned[3] == "90.0%" and pruned[11] == "92.50" and pruned[-1] == "1.50"  # drop vs the 94.0 baseline
    assert pruned[10] == "n/a"  # null energy
    assert pruned[4] == "90.1%"  # 1 - 99 / 1000: against the dense model of the same run
    baseline = rows[0].strip("| ").split(" | ")
    assert baseline[10] == "cpu 500.0" and baseline[-1] == "0.00"
    assert "50.00" not in text  # the older duplicate run is hidden
    assert "1 older run(s) hidden" in text
    channel = next(r for r in rows if "channel-pruned" in r).strip("| ").split(" | ")
    assert channel[7] == "—"  # missing latency shows as missing
    assert "Runs with missing or invalid fields" in text and "latency_ms" in text
    assert "cpu, dram: no RAPL interface" in text
    assert (tmp_path / "report_plots" / "cifar10_accuracy_vs_sparsity.png").stat().st_size > 1000
    assert (tmp_path / "report_plots" / "cifar10_latency_size.png").is_file()
    assert "### cifar10: per-layer sparsity" in text
    ops = [line for line in text.splitlines() if "`aten::" in line]
    assert ops == [
        "| unstructured | pruned-masked | `aten::mkldnn_convolution` 80%, `aten::addmm` 10%, `aten::to_dense` 1% "
        "| `aten::to_dense` x13 |"
    ]  # only runs whose profile lists operators get a row


def test_all_runs_keeps_duplicates(tmp_path):
    logs = tmp_path / "logs"
    fixture_logs(logs)
    text = build_report(logs, tmp_path / "REPORT.md", all_runs=True)
    assert "50.00" in text
    # Two shown runs of one task are told apart by their experiment.
    assert "| unstructured (cifar10_unstructured) | pruned-masked |" in text and "| baseline | dense |" in text


def test_missing_logs_folder_is_one_clear_error(tmp_path, capsys):
    try:
        main(["--logs", str(tmp_path / "nope")])
    except SystemExit as exit_:
        assert exit_.code == 2
    assert "--logs: no such folder" in capsys.readouterr().err


def test_random_init_runs_are_compared_with_the_latest_baseline(tmp_path):
    logs = tmp_path / "logs"
    _write(logs, "short_baseline", 0, "baseline", "2026-01-01T00:00:00+00:00", [_model("dense", 47.0, 0.0, None)])
    _write(logs, "same_budget_dense", 0, "baseline", "2026-01-02T00:00:00+00:00", [_model("dense", 70.0, 0.0, None)])
    _write(logs, "snip", 0, "snip", "2026-01-03T00:00:00+00:00", [_model("pruned-masked", 64.0, 0.9, None)])
    text = build_report(logs, tmp_path / "REPORT.md")
    snip = next(line for line in text.splitlines() if line.startswith("| snip |")).strip("| ").split(" | ")
    assert snip[-1] == "6.00"  # 70.0 - 64.0, not 47.0 - 64.0
    assert "the baseline run `same_budget_dense`" in text
    assert "| baseline (short_baseline) | dense |" in text and "| baseline (same_budget_dense) | dense |" in text
    # A named reference wins over recency.
    text = build_report(logs, tmp_path / "REPORT.md", references=["short_baseline"])
    snip = next(line for line in text.splitlines() if line.startswith("| snip |")).strip("| ").split(" | ")
    assert snip[-1] == "-17.00" and "the baseline run `short_baseline`" in text
    # Else a run from random weights is compared with the baseline trained for as many epochs, however old.
    for name, epoch in (("short_baseline", 19), ("same_budget_dense", 39), ("snip", 19)):
        path = logs / name / "version_0" / "results.json"
        data = json.loads(path.read_text())
        data["checkpoint"] = {"path": "x", "sha256": "0", "epoch": epoch, "global_step": 1, "finished": True}
        path.write_text(json.dumps(data))
    text = build_report(logs, tmp_path / "REPORT.md")
    snip = next(line for line in text.splitlines() if line.startswith("| snip |")).strip("| ").split(" | ")
    assert snip[-1] == "-17.00"  # 47.0 - 64.0: the 20-epoch baseline, not the newer 40-epoch one


def test_a_newer_one_seed_baseline_does_not_displace_the_one_of_several_seeds(tmp_path):
    logs = tmp_path / "logs"
    runs = [("base", seed, 70.0 + seed) for seed in range(3)] + [("base_e60", 0, 80.0)]
    for day, (name, seed, top1) in enumerate(runs, start=1):
        created = f"2026-01-0{day}T00:00:00+00:00"
        path = _write(logs, name, seed, "baseline", created, [_model("dense", top1, 0.0, None)])
        data = json.loads(path.read_text())
        data.update(seed=seed, config_key=name)
        path.write_text(json.dumps(data))
    assert "the baseline run `base`" in build_report(logs, tmp_path / "REPORT.md")
    # Among baselines of as many seeds the newest is the reference.
    assert "the baseline run `base_e60`" in build_report(logs, tmp_path / "REPORT.md", all_runs=True)


def test_unknown_reference_is_one_clear_error(tmp_path, capsys):
    logs = tmp_path / "logs"
    fixture_logs(logs)
    with pytest.raises(SystemExit) as exit_:
        main(["--logs", str(logs), "--out", str(tmp_path / "R.md"), "--reference", "nope"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--reference: no baseline run named nope" in err and "cifar10_baseline" in err
    assert not (tmp_path / "R.md").exists()


def test_accuracy_plot_counts_parameters_removed_against_the_dense_baseline():
    # Channel pruning: fewer parameters though its own weights are mostly dense.
    assert _removed({"nonzero_params": 302_435, "sparsity": 0.467}, 1_256_724) == pytest.approx(0.7593, abs=1e-4)
    assert _removed({"sparsity": 0.9}, None) == 0.9  # no baseline: the run's own sparsity


def test_1b_stages_say_why_they_fired_and_what_they_removed(tmp_path):
    logs = tmp_path / "logs"
    path = _write(logs, "digits_grasp_abs", 0, "grasp", "2026-01-01T00:00:00+00:00",
                  [_model("pruned-masked", 80.0, 0.9, None)])
    data = json.loads(path.read_text())
    stage = {"stage": 1, "epoch": 3, "reason": "accuracy", "val_top1": 25.0, "trigger_top1": 20,
             "fallback_epoch": 6, "sparsity": 0.45, "diagnostics": {"removed": 0.45, "top_removed": 0.02,
                                                                   "filter_sum_ratio": 0.011}}
    data["schedule"] = {"method": "grasp_abs", "stages": [stage, {**stage, "stage": 2, "epoch": 6,
                                                                  "reason": "fallback", "val_top1": 31.0}]}
    path.write_text(json.dumps(data))
    text = build_report(logs, tmp_path / "REPORT.md")
    rows = [line for line in text.splitlines() if line.startswith("| grasp_abs | ")]
    assert rows[0].startswith("| grasp_abs | pruned-masked |")  # labelled by its method, not its task
    stages = [r.split(" | ") for r in rows[1:]]
    assert [(s[1], s[2], s[3].split(" ")[0]) for s in stages] == [("1", "3", "accuracy"), ("2", "6", "fallback")]
    assert stages[0][-2:] == ["2.0%", "0.011 |"]


def test_1b_stages_merge_over_seeds_with_their_95_percent_interval(tmp_path):
    logs = tmp_path / "logs"
    for seed, (epoch, reason, top) in enumerate([(3, "accuracy", 0.50), (6, "fallback", 0.60), (4, "accuracy", 0.55)]):
        path = _write(logs, "digits_grasp", seed, "grasp", f"2026-01-0{seed + 1}T00:00:00+00:00",
                      [_model("pruned-masked", 40.0, 0.9, None)])
        data = json.loads(path.read_text())
        data.update(seed=seed, config_key="same")
        data["schedule"] = {"method": "grasp", "stages": [
            {"stage": 1, "epoch": epoch, "reason": reason, "val_top1": 20.0 + seed, "trigger_top1": 20,
             "fallback_epoch": 6, "sparsity": 0.45,
             "diagnostics": {"removed": 0.45, "top_removed": top, "filter_sum_ratio": 0.01}}]}
        path.write_text(json.dumps(data))
    text = build_report(logs, tmp_path / "REPORT.md")
    stage = next(line for line in text.splitlines() if line.startswith("| grasp | 1 |")).strip("| ").split(" | ")
    assert stage[2] == "4.3 ± 3.8 (n=3)"  # epochs 3, 6, 4: sd 1.53, t(0.975, 2) = 4.30, so 4.30 * 1.53 / sqrt 3
    assert stage[3].startswith("accuracy x2, fallback x1")
    assert stage[7] == "55.0% ± 12.4% (n=3)"  # top-10% magnitude removed, per seed 50 / 60 / 55 %


def test_runs_that_differ_only_in_seed_show_mean_and_95_percent_interval(tmp_path):
    logs = tmp_path / "logs"
    for version, (seed, top1) in enumerate([(0, 90.0), (1, 92.0), (2, 94.0)]):
        path = _write(logs, "cifar10_unstructured", version, "unstructured", f"2026-01-0{version + 1}T00:00:00+00:00",
                      [_model("dense", 95.0, 0.0, None), _model("pruned-masked", top1, 0.9, None)])
        data = json.loads(path.read_text())
        data.update(seed=seed, config_key="same")
        path.write_text(json.dumps(data))
    other = _write(logs, "cifar10_unstructured", 3, "unstructured", "2025-12-31T00:00:00+00:00",
                   [_model("pruned-masked", 10.0, 0.9, None)])  # older and configured otherwise: hidden
    data = json.loads(other.read_text())
    data.update(seed=5, config_key="other")
    other.write_text(json.dumps(data))
    text = build_report(logs, tmp_path / "REPORT.md")
    row = next(line for line in text.splitlines() if line.startswith("| unstructured | pruned-masked |"))
    cells = row.strip("| ").split(" | ")
    assert cells[11] == "92.00 ± 4.97 (n=3)"  # test top-1 over the three seeds: sd 2, t(0.975, 2) * 2 / sqrt 3
    assert cells[-1] == "3.00 ± 4.97 (n=3)"  # drop against the runs' own dense model, per seed
    assert "from 3 run(s)" in text and "1 older run(s) hidden" in text and "10.00" not in text
    merged = [merge_runs(g) for g in seed_groups(load_runs(logs))]
    [(x, y, xerr, yerr)] = [pt for pt in accuracy_series(merged)["unstructured"] if pt[0] > 0]
    assert (x, y) == (90.0, 92.0) and yerr == pytest.approx(4.968, abs=1e-3)  # error bar: the 95 % half-width


def test_budget_table_picks_the_highest_target_whose_interval_stays_within_the_drop(tmp_path):
    logs = tmp_path / "logs"
    points = [("unstructured", 0.7, [93.0, 93.2, 92.8]), ("unstructured", 0.8, [90.5, 90.7, 90.3]),
              ("unstructured", 0.9, [85.0, 85.5, 84.5]), ("grasp", 0.7, [60.0, 61.0, 59.0]),
              ("grasp", 0.9, [40.0, 41.0, 39.0]), ("channel", 0.7, [92.0, 88.0, 91.0]),
              ("channel", 0.9, [80.0, 80.5, 79.5])]
    version = 0
    for method, target, top1s in points:
        for seed, top1 in enumerate(top1s):
            models = [_model("channel-pruned" if method == "channel" else "pruned-masked", top1, target, None)]
            if method in ("unstructured", "channel"):
                models.insert(0, _model("dense", 94.0, 0.0, None))
            path = _write(logs, f"cifar10_{method}_t{round(100 * target)}", seed, method,
                          f"2026-01-01T00:00:{version:02d}+00:00", models)
            data = json.loads(path.read_text())
            data.update(seed=seed, config_key=f"{method}{target}",
                        pruning={"task": method, "method": "lasso" if method == "channel" else method,
                                 "target_sparsity": target})
            path.write_text(json.dumps(data))
            version += 1
    for seed in range(3):
        path = _write(logs, "cifar10_baseline", seed, "baseline", f"2026-01-09T00:00:0{seed}+00:00",
                      [_model("dense", 94.0, 0.0, None)])
        data = json.loads(path.read_text())
        data.update(seed=seed, config_key="base")
        path.write_text(json.dumps(data))
    text = build_report(logs, tmp_path / "REPORT.md", max_drop=5.0)
    section = text.split("### cifar10: the accuracy budget")[1].split("\n### ")[0]
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in section.splitlines()
            if line.startswith(("| unstructured", "| grasp", "| channel"))}
    assert rows["unstructured"][1] == "80%"  # drops 3.5 +- 0.5: within 5 points
    assert rows["unstructured"][2] == "70%: 1.00 ± 0.50 (n=3); 80%: 3.50 ± 0.50 (n=3); 90%: 9.00 ± 1.24 (n=3)"
    assert rows["unstructured"][5] == "3.50 ± 0.50 (n=3)"
    # channel at 70 %: mean drop 3.7, but its interval reaches 8.8 points: the budget is not established
    assert rows["channel"][1] == "not established (least drop at 70%)" and rows["channel"][5] == "3.67 ± 5.17 (n=3)"
    assert rows["grasp"][1] == "not established (least drop at 70%)" and rows["grasp"][5].startswith("34.00 ± ")


def test_a_random_init_drop_pairs_each_seed_with_its_own_dense_reference(tmp_path):
    """GraSP-style runs have no dense model of their own: seed k's drop is against seed k's never-pruned run,
    so the interval carries the reference's spread too (not only the pruned model's)."""
    logs = tmp_path / "logs"
    dense, pruned = {0: 50.0, 1: 56.0, 2: 53.0}, {0: 20.0, 1: 22.0, 2: 21.0}
    for seed in dense:
        for experiment, task, model in (("cifar10_dense", "baseline", _model("dense", dense[seed], 0.0, None)),
                                        ("cifar10_grasp", "grasp", _model("pruned-masked", pruned[seed], 0.9, None))):
            path = _write(logs, experiment, seed, task, f"2026-01-0{seed + 1}T00:00:00+00:00", [model])
            data = json.loads(path.read_text())
            data.update(seed=seed, config_key=experiment)
            path.write_text(json.dumps(data))
    text = build_report(logs, tmp_path / "REPORT.md")
    row = next(line for line in text.splitlines() if line.startswith("| grasp | pruned-masked |"))
    drops = [dense[s] - pruned[s] for s in dense]  # 30, 34, 32: sd 2
    assert row.strip("| ").split(" | ")[-1] == f"{sum(drops) / 3:.2f} ± 4.97 (n=3)"  # not the pruned top-1's ± 2.48


def test_a_seed_missing_a_figure_is_named_and_not_merged(tmp_path):
    logs = tmp_path / "logs"
    for version in range(3):  # version_0 is the newest; version_2 lacks its top-1
        path = _write(logs, "cifar10_unstructured", version, "unstructured", f"2026-01-0{3 - version}T00:00:00+00:00",
                      [_model("pruned-masked", 90.0 + version, 0.9, None)])
        data = {**json.loads(path.read_text()), "seed": version, "config_key": "same"}
        if version == 2:
            del data["models"][0]["accuracy"]["test_top1"]
        path.write_text(json.dumps(data))
    [group] = seed_groups(load_runs(logs))
    assert sorted(r.seed for r in group) == [0, 1]  # n=2 in every column
    text = build_report(logs, tmp_path / "REPORT.md")
    invalid = text.split("## Runs with missing or invalid fields")[1]
    assert "version_2/results.json" in invalid and "test_top1" in invalid and "left out of the tables" in invalid
    assert "version_0" not in invalid and "version_1" not in invalid


def test_budget_targets_keep_the_decimals_that_tell_them_apart(tmp_path):
    logs = tmp_path / "logs"
    for version, (target, top1) in enumerate([(0.995, 91.0), (0.999, 80.0)]):
        path = _write(logs, f"cifar10_unstructured_t{round(1000 * target)}", 0, "unstructured",
                      f"2026-01-0{version + 1}T00:00:00+00:00",
                      [_model("dense", 94.0, 0.0, None), _model("pruned-masked", top1, target, None)])
        data = {**json.loads(path.read_text()), "pruning": {"task": "unstructured", "method": "magnitude",
                                                           "target_sparsity": target}}
        path.write_text(json.dumps(data))
    section = build_report(logs, tmp_path / "REPORT.md").split("### cifar10: the accuracy budget")[1]
    row = next(line for line in section.splitlines() if line.startswith("| unstructured"))
    assert "| 99.5% |" in row and "99.5%: 3.00; 99.9%: 14.00" in row and "100%" not in row


def _run_time_nodes(tree: ast.AST):
    """Every node of a module but those under ``if TYPE_CHECKING:`` (never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            todo += node.orelse
            continue
        yield node
        todo += ast.iter_child_nodes(node)


def _imports(modules: dict[str, Path], name: str) -> set[str]:
    """The package's modules that ``name`` imports when it runs, at the top or inside a function."""
    path = modules[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _run_time_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up node.level - 1 folders
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != name}


def test_no_module_of_the_package_imports_itself_through_others():
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {name: _imports(modules, name) for name in modules}
    circular = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            name = todo.pop()
            if name not in seen:
                seen.add(name)
                todo += graph[name]
        circular += [start] if start in seen else []
    assert not circular, f"modules that import themselves through others: {sorted(circular)}"

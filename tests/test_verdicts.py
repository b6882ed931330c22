"""Every verdict the docs state, recomputed from the kept results with scipy.stats and Holm's correction.

Independent of the report's own statistics code: the per-seed top-1s are read from docs/results, each pair
is tested here (paired on the shared seeds when there are two or more, else Welch), the family of every
comparison the pages make is corrected by Holm's step-down method, and each verdict in the text (the prose's,
as its template renders it, and the controls tables') must say what the corrected p allows.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from scipy import stats

from lightning_prune.report import controls, docs
from lightning_prune.report.collect import load_runs, merge_runs, seed_groups
from lightning_prune.report.stats import holm

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ROW = re.compile(r"^\| [12][ab]?: [^|]+\| `([^`]+)`: [^|]+\| `([^`]+)`: [^|]+\|[^|]+\|[^|]+\| ([^|]+) \|$", re.M)


def _per_seed(run) -> dict[int, float]:
    value = controls.pruned_top1(run)
    return dict(zip(getattr(value, "seeds", []), getattr(value, "values", [])))


def _p(a: dict[int, float], b: dict[int, float]) -> tuple[float, float]:
    shared = sorted(set(a) & set(b) - {None})
    if len(shared) >= 2:
        xs, ys = [a[s] for s in shared], [b[s] for s in shared]
        return sum(x - y for x, y in zip(xs, ys)) / len(xs), float(stats.ttest_rel(xs, ys).pvalue)
    diff = sum(a.values()) / len(a) - sum(b.values()) / len(b)
    return diff, float(stats.ttest_ind(list(a.values()), list(b.values()), equal_var=False).pvalue)


def _holm(ps: list[float]) -> list[float]:
    m, order = len(ps), sorted(range(len(ps)), key=ps.__getitem__)
    out, worst = [1.0] * m, 0.0
    for k, i in enumerate(order):
        worst = max(worst, (m - k) * ps[i])
        out[i] = min(1.0, worst)
    return out


def _stated() -> tuple[list[tuple[str, str, str, str]], set[tuple[str, str]]]:
    """(page, method experiment, control experiment, verdict text) for every verdict the pages state, and every
    pair their prose compares (``cmp`` or ``verdict``): the templates are rendered with both calls recorded."""
    env = docs.environment(DOCS, DOCS / "results")
    found, compared, page = [], set(), ""

    def recorded(name):
        def call(a, b):
            compared.add((a, b))
            text = original[name](a, b)
            if name == "verdict":
                found.append((page, a, b, text))
            return text
        return call

    original = {name: env.globals[name] for name in ("cmp", "verdict")}
    env.globals.update({name: recorded(name) for name in original})
    for template in env.list_templates(extensions=["j2"]):
        page = template
        env.get_template(template).render()
    for path in sorted(DOCS.glob("*.md")):
        found += [(path.name, a, b, v.strip()) for a, b, v in ROW.findall(path.read_text())]
    return found, compared


def test_every_stated_verdict_follows_from_the_corrected_test():
    runs = {r.experiment: r for r in (merge_runs(g) for g in seed_groups(load_runs(DOCS / "results")))}
    stated, compared = _stated()
    assert len(stated) >= 16, stated  # the controls table and the prose
    assert sum(page.endswith(".j2") for page, *_ in stated) >= 10, stated  # the prose's own verdicts
    pairs = sorted({(a, b) for _, a, b, _ in stated})
    tested = {pair: _p(_per_seed(runs[pair[0]]), _per_seed(runs[pair[1]])) for pair in pairs}
    family = sorted({*pairs, *compared})
    for pair in family:
        tested.setdefault(pair, _p(_per_seed(runs[pair[0]]), _per_seed(runs[pair[1]])))
    corrected = dict(zip(family, _holm([tested[pair][1] for pair in family])))
    for page, a, b, text in stated:
        diff, p_holm = tested[(a, b)][0], corrected[(a, b)]
        expected = ("method better" if diff > 0 else "control better") if p_holm < 0.05 else "not established"
        assert text.startswith(expected), (page, a, b, text, p_holm)
        assert f"Holm p = {p_holm:.2g}" in text, (page, a, b, text, p_holm)


def test_holm_matches_the_textbook_example():
    # Holm (1979): p = 0.01, 0.04, 0.03, 0.005 -> 0.03, 0.06, 0.06, 0.02
    assert _holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def _calls_of(name: str) -> tuple[list, dict]:
    """Every call of the template function ``name`` the pages make, with what it rendered, and the kept runs."""
    env = docs.environment(DOCS, DOCS / "results")
    runs = {r.experiment: r for r in (merge_runs(g) for g in seed_groups(load_runs(DOCS / "results")))}
    said, original = [], env.globals[name]
    env.globals[name] = lambda *args: said.append((args, original(*args))) or said[-1][1]
    for template in env.list_templates(extensions=["j2"]):
        env.get_template(template).render()
    return said, runs


def test_every_cost_comparison_within_a_run_follows_from_its_corrected_paired_test():
    """``within`` (a pruned model's memory, latency or size against its own run's dense model): recomputed per
    seed with scipy's paired t and Holm over every such call the pages make; a figure equal in every seed is
    reported as such, with no test."""
    said, runs = _calls_of("within")
    assert {args[2] for args, _ in said} >= {"latency", "peak_memory", "avg_memory"}, said
    section = {"latency": "latency_ms", "peak_memory": "peak_memory_mb", "avg_memory": "avg_memory_mb",
               "size": "model_size_mb"}

    def per_seed(experiment, variant, field):
        value = next(m for m in runs[experiment].data["models"] if m["variant"] == variant)["profile"][section[field]]
        return dict(zip(value.seeds, value.values))

    tests, fixed = {}, {}
    for args, _ in said:
        a, b = per_seed(*args), per_seed(args[0], "dense", args[2])
        diffs = [a[s] - b[s] for s in sorted(a)]
        if max(diffs) - min(diffs) < 1e-6 * abs(max(b.values())):
            fixed[args] = diffs[0]
        else:
            tests[args] = (sum(diffs) / len(diffs), float(stats.ttest_rel([a[s] for s in sorted(a)],
                                                                          [b[s] for s in sorted(a)]).pvalue))
    assert tests, said  # latency varies from seed to seed: tested, not declared fixed
    corrected = dict(zip(tests, _holm([p for _, p in tests.values()])))
    for args, text in said:
        if args in fixed:
            assert f"({fixed[args]:+.1f}, the same in each of" in text, (args, text)
            continue
        diff, p_holm = tests[args][0], corrected[args]
        expected = ("lower" if diff < 0 else "higher") if p_holm < 0.05 else "not established"
        assert text.endswith(f"Holm p = {p_holm:.2g}: {expected})"), (args, text, p_holm)


def test_every_drop_against_the_fine_tuned_reference_is_recomputed_seed_by_seed():
    """``drops``: a pruned run's top-1 loss on the seeds it shares with a dense run trained as long, against its
    own baseline and against that run, each with its 95 % t interval; "within" only where the interval's upper
    end is within the budget."""
    said, runs = _calls_of("drops")
    assert {args[0] for args, _ in said} >= {"cifar10subset_unstructured", "cifar10subset_channel_t70"}, said

    def seeds_of(value):
        return dict(zip(value.seeds, value.values))

    for (experiment, reference, *budget), text in said:
        models = {m["variant"]: m["accuracy"]["test_top1"] for m in runs[experiment].data["models"]}
        pruned = seeds_of(controls.pruned_top1(runs[experiment]))
        own, ref = seeds_of(models["dense"]), seeds_of(runs[reference].data["models"][0]["accuracy"]["test_top1"])
        shared = sorted(set(pruned) & set(ref))
        assert len(shared) >= 2, (experiment, shared)
        for base in (own, ref):
            drops = [base[s] - pruned[s] for s in shared]
            mean, half = sum(drops) / len(drops), stats.t.ppf(0.975, len(drops) - 1) * stats.tstd(drops) / len(
                drops) ** 0.5
            assert f"{mean:.2f} ± {half:.2f} against" in text, (experiment, text)
        fair = [ref[s] - pruned[s] for s in shared]
        upper = sum(fair) / len(fair) + stats.t.ppf(0.975, len(fair) - 1) * stats.tstd(fair) / len(fair) ** 0.5
        within = "within" if upper <= (budget[0] if budget else 5.0) else "not within"
        assert f"({within} " in text and f"seeds {', '.join(map(str, shared))})" in text, (experiment, text)

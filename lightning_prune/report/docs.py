"""The docs pages, rendered from jinja2 templates (``docs/src/NAME.md.j2`` to ``docs/NAME.md``) so that no table,
figure or number in them can go stale: each is a call to a method of :class:`Sources`, read from the runs kept in
``docs/results`` (``report --snapshot``) or from a JSON file the page cites."""

from __future__ import annotations

import json
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path

import jinja2
from jinja2 import nodes

from lightning_prune.names import MASKED
from lightning_prune.report import controls, plots, stats, tables
from lightning_prune.report.baselines import dense_params, drop_value, reference_top1, removed_share, trained_epochs
from lightning_prune.report.collect import RunResults, load_runs, merge_runs, run_version, seed_groups
from lightning_prune.report.handoff import HANDOFF_FILE, handoff_table, ladders, records_of
from lightning_prune.report.stats import Comparison, Stat
from lightning_prune.results import atomic_write_bytes
from lightning_prune.runs import GRID_SUFFIX

SOURCES, SUFFIX, FIGURES = "src", ".md.j2", "figures"  # beside the pages: their templates, the figures drawn
ENTRANCE = "README.md.j2"  # rendered into the repository's root, above the docs folder
FIELDS = {"top1": ("accuracy", "test_top1", "{:.2f}"), "top5": ("accuracy", "test_top5", "{:.2f}"),
          "train_top1": ("accuracy", "train_top1", "{:.2f}"), "size": ("profile", "model_size_mb", "{:.2f}"),
          "sparsity": ("profile", "sparsity", "{:.1%}"), "nonzero": ("profile", "nonzero_params", "{:,}"),
          "latency": ("profile", "latency_ms", "{:.1f}"), "params": ("profile", "params", "{:,}"),
          "peak_memory": ("profile", "peak_memory_mb", "{:.1f}"), "avg_memory": ("profile", "avg_memory_mb", "{:.1f}")}


def snapshot(groups: list[list[RunResults]], logs: Path, target: Path) -> list[Path]:
    """Copy every shown run's results.json (all its seeds) to ``target``, keeping the layout below ``logs``,
    and every export record (handoff.json) of a shown experiment: the hand-off table and the ladder read them."""
    if target.exists():
        shutil.rmtree(target)
    paths = [run.path for group in groups for run in group]
    for experiment in sorted({run.experiment for group in groups for run in group}):
        paths += sorted((logs / experiment).glob(f"version_*/export/{HANDOFF_FILE}"), key=run_version)
    for path in paths:
        (target / path.relative_to(logs)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target / path.relative_to(logs))
    return [target / path.relative_to(logs) for path in paths]


class Sources:
    """What a template can show: each public method is the template function of the same name."""

    def __init__(self, results: Path, folder: Path, pairs: list[tuple[str, str]], draw: bool = False,
                 costs: list[tuple] = ()):
        self.results, self.folder, self.pairs, self.draw = results, folder, pairs, draw
        self.runs = {r.experiment: r for r in (merge_runs(g) for g in seed_groups(load_runs(results)))}
        self.tested: dict[tuple[str, str], Comparison] = {}  # Holm over each controls table and the prose's pairs
        for dataset in {r.dataset for r in self.runs.values()}:
            self.tested.update(controls.family(self._dataset(dataset), pairs))
        self.exports = sorted(results.rglob(HANDOFF_FILE), key=run_version)
        self.costs = {(*args, "dense")[:4]: self._cost(*args) for args in costs}  # within(): one Holm family
        tested = [c for _, _, c in self.costs.values() if c is not None]
        for c, p in zip(tested, stats.holm([c.p for c in tested])):
            c.p_holm, c.family = p, len(tested)

    def _dataset(self, name: str, main: bool = False) -> list[RunResults]:
        """The dataset's runs; ``main``: those that are no budget-grid point (all when every run is one)."""
        group = self._found(f"kept runs of the dataset {name}", [r for r in self.runs.values() if r.dataset == name])
        return ([r for r in group if not GRID_SUFFIX.search(r.experiment)] or group) if main else group

    def _found(self, what: str, found):
        if found is None or (isinstance(found, list) and not found):
            raise ValueError(f"no {what} under {self.results}")
        return found

    def _run(self, experiment: str) -> RunResults:
        return self._found(f"kept run {experiment}", self.runs.get(experiment))

    def _model(self, experiment: str, variant: str) -> tuple[RunResults, dict]:
        run = self._run(experiment)
        entry = next((m for m in run.data["models"] if m.get("variant") == variant), None)
        return run, self._found(f"variant {variant} of {experiment}", entry)

    def _figure(self, name: str, draw: Callable[[Path], Path | None]) -> str:
        """A figure's markdown; drawn into figures/ beside the pages when rendering (not when comparing)."""
        if self.draw:
            (self.folder / FIGURES).mkdir(exist_ok=True)
            self._found(f"runs for the figure {name}", draw(self.folder / FIGURES / f"{name}.png"))
        return f"![{name}]({FIGURES}/{name}.png)"

    def results_table(self, dataset: str) -> str:
        main = self._dataset(dataset, main=True)
        seeds = sorted({len(r.data.get("seeds") or [r.data.get("seed")]) for r in main})
        return (f"Generated by `make results-docs` from the kept results.json files ({len(main)} experiments; "
                f"seeds per experiment: {', '.join(map(str, seeds))}).\n\n" + tables.results_table(main))

    def baseline_table(self, *experiments: str) -> str:
        """Task 0: the dense model of each experiment, profiled (the results table's columns that apply)."""
        shown = [i for i, c in enumerate(tables.COLUMNS) if i > 1 and not any(w in c for w in ("sparsity", "removed",
                                                                                               "drop"))]
        rows = [tables.row(*self._model(e, "dense"), None) for e in experiments]
        return tables.markdown(["experiment", *(tables.COLUMNS[i] for i in shown)],
                               [[f"`{e}`", *(r[i] for i in shown)] for e, r in zip(experiments, rows)])

    def budget_table(self, dataset: str, max_drop: float = 5.0) -> str:
        return self._found(f"budget runs of {dataset}", tables.budget_table(self._dataset(dataset), max_drop))

    def stages_table(self, dataset: str) -> str:
        return self._found(f"1b stages of {dataset}", tables.schedule_table(self._dataset(dataset, main=True)))

    def controls_table(self, dataset: str) -> str:
        return self._found(f"controls of {dataset}", controls.controls_table(self._dataset(dataset), self.pairs))

    def sensitivity_figure(self, experiment: str) -> str:
        """The 1a sweep of the experiment's latest seed, drawn from its results.json."""
        run = self._run(experiment)
        return self._figure(f"{experiment}-sensitivity", lambda path: plots.sensitivity_figure(run, path))

    def learning_curves_figure(self, dataset: str) -> str:
        main = [r for r in self._dataset(dataset) if not GRID_SUFFIX.search(r.experiment)]
        return self._figure(f"{dataset}-curves", lambda path: plots.learning_curves(main, path))

    def layer_sparsity_figure(self, dataset: str, kind: str) -> str:
        """Per-layer sparsity of one of :func:`plots.layer_families` (1a, 1b_staged, 1b_oneshot, 1b_grasp)."""
        members = self._found(f"{kind} runs of {dataset}", plots.layer_families(self._dataset(dataset)).get(kind))
        title = f"{dataset}: per-layer sparsity, {kind.replace('_', ' ')}"
        return self._figure(f"{dataset}-layers-{kind}", lambda path: plots.layer_sparsity(members, path, title))

    def handoff_table(self) -> str:
        """Each experiment's newest export."""
        newest = {path.parents[2].name: path for path in self._found("handoff.json", self.exports)}
        return handoff_table(sorted(newest.values()))

    def ladder(self, dataset: str) -> str:
        return self._found(f"ladder exports of {dataset}", ladders(records_of(self.exports)).get(dataset))

    def include_file(self, path: str) -> str:
        """A generated file kept elsewhere (a benchmark's table), shown as it is."""
        try:
            return (self.folder / path).read_text().rstrip("\n")
        except (OSError, UnicodeDecodeError) as err:
            reason = getattr(err, "strerror", None) or type(err).__name__
            raise ValueError(f"cites {self.folder / path}, which cannot be read ({reason})") from err

    def json_file(self, path: str):
        """A kept JSON file (a benchmark's, the evidence timing): index it, then format it with ``| fmt(SPEC)``."""
        try:
            return json.loads(self.include_file(path))
        except json.JSONDecodeError as err:
            raise ValueError(f"cites {self.folder / path}, which is not JSON ({err})") from err

    def model_value(self, experiment: str, variant: str, field: str) -> str:
        """A figure of a kept model: a field of :data:`FIELDS`, ``drop`` (top-1 points lost, as in the results
        table), ``removed`` (share of the dense model's parameters gone) or ``macs`` (millions)."""
        (run, entry), runs = self._model(experiment, variant), list(self.runs.values())
        if field == "drop":
            return tables.num(drop_value(reference_top1(run, runs), entry["accuracy"]["test_top1"]))
        if field == "removed":
            return tables.num(removed_share(entry["profile"], dense_params(run, runs)), "{:.1%}")
        if field == "macs":
            return tables.num(tables.scaled(entry["profile"]["macs"], 1e-6), "{:.1f}")
        section, name, fmt = self._found(f"field {field} (drop, removed, macs, {', '.join(FIELDS)})", FIELDS.get(field))
        return tables.num(entry[section][name], fmt)

    def epochs(self, experiment: str) -> str:
        """Epochs the measured model trained."""
        return str(trained_epochs(self._run(experiment)))

    def final_val_top1(self, experiment: str) -> str:
        """The last validation top-1 of the run's learning curve (over its seeds)."""
        run = self._run(experiment)
        histories = run.data.get("histories") or [run.data.get("history") or []]
        return tables.num(Stat([h[-1]["val_top1"] for h in histories if h]), "{:.2f}")

    def fired(self, experiment: str) -> str:
        """A staged run's triggers (validation top-1) and, over its seeds, whether its trigger or its fallback epoch
        fired each stage."""
        schedule = self._found(f"staged schedule of {experiment}", self._run(experiment).data.get("schedule"))
        stages = "; ".join(f"stage {s['stage']} {s['reason']}" for s in schedule.get("stages") or [])
        return f"triggers {' / '.join(f'{t:g}' for t in schedule['accuracy_triggers'])} %: {stages}"

    def cmp(self, a: str, b: str) -> str:
        """Pruned top-1 of ``a`` minus that of ``b``, with its test and Holm-corrected p."""
        r = self._found(f"comparison of {a} with {b} (a run missing, or under 2 seeds)", self.tested.get((a, b)))
        return (f"{r.difference:+.2f} ± {r.ci95:.2f} points ({r.test}, n = {r.n[0]}/{r.n[1]}, p = {r.p:.2g}, "
                f"Holm p = {r.p_corrected:.2g})")

    def verdict(self, a: str, b: str) -> str:
        """What the corrected test of ``a`` against ``b`` allows to say."""
        return controls.verdict(self._found(f"comparison of {a} with {b}", self.tested.get((a, b))))

    def _cost(self, experiment: str, variant: str, field: str, against: str = "dense"):
        """A cost of two models of one run and its paired test over the seeds: none for a figure equal in every
        seed (a fixed architecture's memory)."""
        section, name, _ = self._found(f"field {field} ({', '.join(FIELDS)})", FIELDS.get(field))
        a, b = (self._model(experiment, v)[1][section][name] for v in (variant, against))
        d = stats.difference(a, b)
        fixed = getattr(d, "n", 1) >= 2 and d.std < 1e-6 * abs(b)
        test = None if fixed else self._found(f"{field} of {experiment} over 2 or more seeds", stats.compare(a, b))
        return a, b, test

    def within(self, experiment: str, variant: str, field: str, against: str = "dense") -> str:
        """A cost of two models of one run (``variant`` / ``against``), seed by seed: its paired test, Holm-corrected
        over every ``within`` of the pages."""
        key = (experiment, variant, field, against)
        a, b, r = self.costs.get(key) or self._cost(*key)
        if r is None:
            return f"{a / b:.2f}x ({a - b:+.1f}, the same in each of {a.n} seeds)"
        said = ("lower" if r.difference < 0 else "higher") if r.p_corrected < controls.ALPHA else "not established"
        return (f"{a / b:.2f}x ({r.difference:+.1f} ± {r.ci95:.1f}, {r.test}, n = {r.n[0]}, p = {r.p:.2g}, "
                f"Holm p = {r.p_corrected:.2g}: {said})")

    def drops(self, experiment: str, reference: str, budget: float = 5.0) -> str:
        """The pruned top-1 drop, seed by seed on the seeds shared with ``reference`` (a dense run trained as long as
        the pruned one was fine-tuned): against the run's own dense model and against ``reference``'s."""
        run, ref = self._run(experiment), stats.per_seed(self._model(reference, "dense")[1]["accuracy"]["test_top1"])
        pruned, own = stats.per_seed(controls.pruned_top1(run)), stats.per_seed(reference_top1(run, []))
        seeds = self._found(f"seeds {experiment} shares with {reference}", [s for s in pruned if s in ref and s in own])
        own, fair = (Stat([base[s] - pruned[s] for s in seeds], seeds) for base in (own, ref))
        within = "within" if tables.meets(fair, budget) else "not within"
        return (f"{own:.2f} ± {own.ci95:.2f} against its own baseline, {fair:.2f} ± {fair.ci95:.2f} against "
                f"`{reference}` ({within} {budget:g} points at 95 %; seeds {', '.join(map(str, seeds))})")

    def layer_sparsity(self, experiment: str, layer: str) -> str:
        """The pruned model's sparsity of one layer."""
        found = [r["sparsity"] for r in self._model(experiment, MASKED)[1].get("layers") or [] if r["name"] == layer]
        return tables.num(self._found(f"layer {layer} in {experiment}", found)[0], "{:.1%}")


def environment(folder: Path, results: Path, draw: bool = False) -> jinja2.Environment:
    """The templates of ``folder``/src, with :class:`Sources` of the runs kept in ``results`` as their functions
    and ``fmt`` (a Python format spec) as a filter; ``draw``: figures are drawn into ``folder``/figures."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(folder / SOURCES), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, keep_trailing_newline=True, autoescape=False)
    costs = list(dict.fromkeys(args for found in calls(env).values() for f, args in found if f == "within"))
    sources = Sources(results, folder, compared_pairs(env), draw, costs)
    env.globals.update({name: getattr(sources, name) for name in vars(Sources) if not name.startswith("_")})
    env.filters["fmt"] = format
    return env


def calls(env: jinja2.Environment) -> dict[str, list[tuple[str, tuple]]]:
    """Per template, every call it makes, in order: the function's name and its constant arguments."""
    found = {}
    for name in env.list_templates(extensions=["j2"]):
        source, filename, _ = env.loader.get_source(env, name)
        found[name] = [(call.node.name, tuple(arg.value for arg in call.args if isinstance(arg, nodes.Const)))
                       for call in env.parse(source, name, filename).find_all(nodes.Call)
                       if isinstance(call.node, nodes.Name)]
    return found


def compared_pairs(env: jinja2.Environment) -> list[tuple[str, str]]:
    """The experiment pairs the templates compare (``cmp``, ``verdict``): with the controls table, one family that
    Holm's method corrects together, the same whichever page is rendered."""
    return list(dict.fromkeys(args for found in calls(env).values() for f, args in found if f in ("cmp", "verdict")))


def _where(err: BaseException) -> str:
    """The template and line an error came from: a syntax error's own, else the innermost template frame's."""
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(err.__traceback__) if f.filename.endswith(SUFFIX)]
    frames += [(err.filename, err.lineno)] if isinstance(err, jinja2.TemplateSyntaxError) else []
    return ":".join(map(str, frames[-1])) if frames else "a template"


def render(folder: Path, results: Path, write: bool = True) -> dict[Path, int | None]:
    """Render every template of ``folder``/src into ``folder`` (``write``, figures too) or only compare: each page
    with the first line that differs from its rendering (None: none); ValueError naming the template and line."""
    if not sorted((folder / SOURCES).glob(f"*{SUFFIX}")):
        raise ValueError(f"no templates {folder / SOURCES}/*{SUFFIX}")
    try:
        env = environment(folder, results, draw=write)
        pages = {(folder.parent if name == ENTRANCE else folder) / name.removesuffix(".j2"):
                 env.get_template(name).render() for name in env.list_templates(extensions=["j2"])}
    except (jinja2.TemplateError, ValueError, LookupError, TypeError) as err:
        raise ValueError(f"{_where(err)}: {' '.join(str(err).split()) or type(err).__name__}") from err
    differs = {}
    for page, text in pages.items():
        old = page.read_text() if page.is_file() else ""
        lines = list(zip(old.splitlines(), text.splitlines()))
        differs[page] = None if old == text else next((i for i, (a, b) in enumerate(lines, 1) if a != b),
                                                      len(lines) + 1)
        if write and old != text:
            atomic_write_bytes(page, text.encode())
    return differs

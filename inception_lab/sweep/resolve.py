"""``sweep --until-resolved``: seeds added where a comparison is not yet answered.

After the sweep file's own seeds, every cell (the values other than the seed) is compared with the baseline cell by
``compare``'s own code (its run directories grouped into cells, ``cells.pick_baseline``, ``cells.paired_difference``
and ``cells.verdict``: one implementation), on the rule's metric. A cell is *resolved* when the rule's verdict is
higher, lower or equal within ±``half_width`` (``compare.sequential``: a group-sequential t test over the planned
looks, and TOST for "equal"); an unresolved cell below ``max_seeds`` gets the next ``step`` seeds, and the baseline
gets every seed a cell gets (the comparison is paired by seed). A cell is judged only when all of its trials and the
baseline's have ended, so a decision never rests on half a round.

The looks are planned: the file's seeds, then ``step`` more a round, up to ``max_seeds``
(:meth:`Rule.design`), and the boundaries spend ``alpha`` over them, so a cell stopped as "higher" at any look, or
as "equal", keeps the error rate ``alpha`` states (per cell; ``compare`` adds Holm's correction across the cells).

The decision is made under the sweep directory's lock (``runner.next_trial``), from the trials ``state.json``
holds (pending and running ones count as planned): any number of runners share the sweep, each seed is added once,
and a restart continues where the last runner stopped. The rule is kept in ``state.json`` (``until_resolved``),
where ``compare`` finds it (:func:`recorded`) to judge the cells by the looks that grew them.

A trial that fails runs once more under its seed (``State.rerun``); failing again (or stopped), its seed is *lost*:
never counted in a look, in ``compare`` (which reads finished runs only) or by ``--emit-followup``, and the cell's
next seed, paired with the baseline's, replaces it at once (:meth:`Judged.account`; a baseline's lost seed is lost
to every cell that has it). A cell that loses more seeds than it finishes gets no more.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from inception_lab.compare.cells import PRIMARY, group, grouping_keys, paired_difference, pick_baseline, verdict
from inception_lab.compare.sequential import Design
from inception_lab.sweep.spec import Sweep, SweepError, Trial, load_sweep

SEED = "seed_everything"
DONE = ("finished", "failed", "stopped")  # a trial that will not change any more (a failed one: after its rerun)
LOST = ("failed", "stopped")  # ended without a result: its seed is not counted, and the cell's next seed replaces it
LEGACY_METRIC = "val/acc_best"  # what a sweep grown before the rule kept its metric was judged by


@dataclass(frozen=True)
class Rule:
    """An --until-resolved sweep's options, kept in its state.json."""

    half_width: float = 0.005  # δ, a fraction of top-1 (0.005: half a point)
    max_seeds: int = 20  # per cell
    alpha: float = 0.05
    step: int = 2  # seeds added to a cell per round
    metric: str = PRIMARY  # the run summary's key a cell is judged by

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        """A rule as state.json keeps it; one written before ``metric`` was kept judged ``LEGACY_METRIC``."""
        return cls(**{"metric": LEGACY_METRIC, **{k: v for k, v in data.items() if k in cls.__dataclass_fields__}})

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def design(self, first: int) -> Design:
        """The looks a cell may stop at, from the sweep file's ``first`` seeds: the rule as ``compare`` judges it."""
        return Design.grown(first, self.step, self.max_seeds, self.alpha, self.half_width)


def file_seeds(sweep: Sweep) -> list[Any]:
    """The sweep file's own seeds (its ``seed_everything`` values; [] without)."""
    seed = next((p for p in sweep.params if p.name == SEED), None)
    return list(seed.spec.get("values") or []) if seed is not None and seed.kind == "categorical" else []


def recorded(directory: Path) -> Rule | None:
    """The rule an --until-resolved sweep directory grew its cells by (its state.json's ``until_resolved``, as
    ``State`` keeps it), read as it is; None for a plain sweep's directory, or none. A state.json that cannot be read
    is one line (SweepError): judged without it, cells grown by looks would read as a fixed sweep's."""
    path = directory / "state.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise SweepError(f"{path}: unreadable ({type(error).__name__}), so whether its cells grew by looks is "
                         "unknown; `python -m inception_lab sweep <its sweep file> --out "
                         f"{directory} --repair` puts it back") from None
    rule = data.get("until_resolved") if isinstance(data, dict) else None
    return Rule.from_json(rule) if isinstance(rule, dict) else None


def recorded_design(directory: Path) -> tuple[Rule, Design] | None:
    """:func:`recorded`'s rule and the design it gives over the directory's copy of its sweep file (sweep.yaml)."""
    rule = recorded(directory)
    if rule is None or not (directory / "sweep.yaml").is_file():
        return None
    seeds = file_seeds(load_sweep(directory / "sweep.yaml"))
    return (rule, rule.design(len(seeds))) if len(seeds) >= 2 else None


def check(sweep: Sweep, rule: Rule) -> list[int]:
    """The sweep file's seeds; SweepError (one line) where the file or the rule cannot be resolved by seeds."""
    where = f"{sweep.path}: --until-resolved"
    if sweep.method != "grid":
        raise SweepError(f"{where} needs method: grid (cells x seeds), not {sweep.method}")
    seeds = file_seeds(sweep)
    if not seeds:
        raise SweepError(f"{where} needs the seeds as a parameter: {SEED}: {{values: [0, 1, 2]}}")
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise SweepError(f"{where}: {SEED} values must be integers, got {seeds}")
    if len(sweep.params) < 2:
        raise SweepError(f"{where}: the sweep has one cell (no parameter besides {SEED}): nothing to compare")
    if len(seeds) < 2:
        raise SweepError(f"{where}: {SEED} has {len(seeds)} value; an interval needs at least 2 seeds per cell")
    if rule.max_seeds < len(seeds):
        raise SweepError(f"--max-seeds {rule.max_seeds}: fewer than the sweep file's {len(seeds)} seeds")
    if not rule.half_width > 0 or not 0 < rule.alpha < 1 or rule.step < 1 or not rule.metric:
        raise SweepError("--half-width must be > 0, --alpha in (0, 1), --seeds-per-round >= 1 and --metric a key")
    return seeds


def check_metric(rule: Rule, trials: list[Trial]) -> None:
    """A finished trial whose record lacks the rule's metric: the key is wrong (a typo, or one its program does not
    record), and no seed would ever resolve a cell. One line naming what it records."""
    for t in trials:
        if t.status == "finished" and t.metrics and rule.metric not in t.metrics:
            raise SweepError(f"--metric {rule.metric}: trial {t.name} finished without it (it records: "
                             f"{', '.join(sorted(t.metrics))}); run the sweep again with --metric one of those")


def metric_fixed(old: Rule, new: Rule, trials: list[Trial]) -> bool:
    """``new`` corrects ``old``'s metric alone, one that no finished trial records: the same sweep, judged right."""
    return old == replace(new, metric=old.metric) and not any(
        old.metric in t.metrics for t in trials if t.status == "finished")


def cell_of(values: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in values.items() if k != SEED}, sort_keys=True)


@dataclass
class Judged:
    """One cell as the rule sees it: its verdict (None while undecided); its seeds that count (planned, under way or
    finished), those it lost (its trial failed after its rerun, or was stopped; a cell's seed is lost too where the
    baseline's is: nothing pairs with it) and those it finished; how many seeds it needs now in place of lost ones
    (``replace``: up to the planned look), unless it lost more than it finished (``given_up``: failing, not unlucky)."""

    cell: str
    values: dict[str, Any]
    seeds: list[int]
    done: bool
    verdict: Any = None  # cells.Verdict
    baseline: bool = False
    lost: list[int] = field(default_factory=list)
    finished: list[int] = field(default_factory=list)
    replace: int = 0
    given_up: bool = False

    @property
    def tried(self) -> list[int]:
        """Every seed it has a trial of: none is added again."""
        return self.seeds + self.lost

    def account(self, baseline: Judged, design: Design) -> None:
        """Its seeds paired with the baseline's, and the replacements it needs: its count back at the look it was
        growing to (the smallest planned look at or above it; a cell that lost a whole round's seeds is back at the
        look before, and judged there again by that look's stricter boundary)."""
        unpaired = [s for s in self.seeds if s in baseline.lost]
        self.seeds = [s for s in self.seeds if s not in unpaired]
        self.lost += unpaired
        self.finished = [s for s in self.finished if s not in baseline.lost]
        self.given_up = len(self.lost) > len(self.finished)
        look = min((n for n in design.looks if n >= len(self.seeds)), default=len(self.seeds))
        self.replace = 0 if self.given_up else look - len(self.seeds)

    def lost_text(self) -> str:
        if not self.lost:
            return ""
        whose = "failed or stopped" if self.baseline else "its or the baseline's trial failed or stopped"
        given_up = "; more lost than finished: no more seeds" if self.given_up else ""
        return f"; lost seed(s) {', '.join(map(str, self.lost))} ({whose}: not counted{given_up})"


def judge(sweep: Sweep, trials: list[Trial], run_dir: Any, rule: Rule) -> list[Judged]:
    """Every cell of the sweep with its verdict against the baseline, as ``compare`` would give it now (from the
    finished trials' run directories: lost seeds count nowhere); cells with unfinished trials (or whose baseline has
    some) stay undecided."""
    from inception_lab.compare.runs import load_run

    return judge_runs(sweep, trials, {t.name: load_run(run_dir(t)) for t in trials if t.status == "finished"}, rule)


def judge_runs(sweep: Sweep, trials: list[Trial], records: dict[str, Any], rule: Rule) -> list[Judged]:
    """:func:`judge` from run records (``compare``'s ``Run``) by trial name: a sweep directory's or a W&B sweep's."""
    from inception_lab.compare.runs import sweep_keys

    cells: dict[str, Judged] = {}
    for trial in trials:
        key, seed = cell_of(trial.values), trial.values.get(SEED)
        entry = cells.setdefault(key, Judged(key, {k: v for k, v in trial.values.items() if k != SEED}, [], True))
        (entry.lost if trial.status in LOST else entry.seeds).append(seed)
        entry.finished += [seed] if trial.status == "finished" else []
        entry.done &= trial.status in DONE
    runs = [records[t.name] for t in trials if t.status == "finished" and t.name in records]
    runs = [r for r in runs if r.status == "finished"]
    names = {id(r): t.name for t in trials if (r := records.get(t.name)) is not None}
    if not runs:
        return list(cells.values())
    trial_cell = {t.name: cell_of(t.values) for t in trials}
    keys = grouping_keys(runs, None, sweep_keys(sweep.config))
    groups = group(runs, keys)
    base = pick_baseline(groups, keys)
    of = {id(g): trial_cell.get(names[id(g.runs[0])]) for g in groups}
    base_key = of[id(base)]
    design = rule.design(len(file_seeds(sweep)))
    if base_key in cells:
        cells[base_key].baseline = True
        for entry in cells.values():
            if not entry.baseline:
                entry.account(cells[base_key], design)
    for g in groups:
        entry = cells.get(of[id(g)])
        if entry is None or entry.baseline or not entry.done or not cells[base_key].done:
            continue
        entry.verdict = verdict(paired_difference(g, base, rule.metric, confidence=1 - rule.alpha), design)
    return list(cells.values())


def follow_ups(sweep: Sweep, trials: list[Trial], run_dir: Any, rule: Rule) -> tuple[list[dict[str, Any]], list[str]]:
    """The trials to add now (values, in order: the baseline's new seeds, then each cell's), [] when nothing is to
    be added yet (a round under way) or ever (every cell resolved or at ``max_seeds``), and a line for each cell whose
    new seeds replace lost ones (at once, round or not: paired with the baseline's, as every seed is)."""
    judged = judge(sweep, trials, run_dir, rule)
    base = next((j for j in judged if j.baseline), None)
    if base is None:
        return [], []
    all_seeds = {s for j in judged for s in j.tried}
    added: dict[str, list[int]] = {}
    for entry in judged:
        if entry.baseline:
            continue
        if entry.replace:
            take = entry.replace
        elif (entry.verdict is None or entry.verdict.resolved or entry.given_up
              or len(entry.seeds) >= rule.max_seeds):
            continue
        else:
            take = min(rule.step, rule.max_seeds - len(entry.seeds))
        # the baseline's seeds this cell lacks first (pairs at half the cost), then new ones
        candidates = sorted(set(base.seeds) - set(entry.tried)) + list(range(max(all_seeds) + 1,
                                                                             max(all_seeds) + 1 + take))
        added[entry.cell] = candidates[:take]
    if not added:
        return [], []
    new_base = sorted({s for seeds in added.values() for s in seeds} - set(base.tried))
    values = [{**base.values, SEED: s} for s in new_base]
    for entry in judged:
        values += [{**entry.values, SEED: s} for s in added.get(entry.cell, [])]
    replacing = [f"{_what(j)}: seed(s) {', '.join(map(str, added[j.cell]))} added for the cell and the baseline in "
                 f"place of lost ones (lost so far: {', '.join(map(str, j.lost))}: failed after a rerun or stopped, "
                 "the cell's or the baseline's; never counted)" for j in judged if j.replace]
    return [_ordered(sweep, v) for v in values], replacing


def _what(entry: Judged) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in entry.values.items()) or "(all)"


def _ordered(sweep: Sweep, values: dict[str, Any]) -> dict[str, Any]:
    """The values in the sweep's parameter order, as the grid's trials have them."""
    return {p.name: values[p.name] for p in sweep.params if p.name in values}


def summary_lines(sweep: Sweep, trials: list[Trial], run_dir: Any, rule: Rule) -> list[str]:
    """Per cell: its verdict, or why it has none, for the runner's closing table."""
    looks = ", ".join(map(str, rule.design(len(file_seeds(sweep))).looks))
    lines = [f"until resolved ({rule.metric}; ±{100 * rule.half_width:g} points, alpha {rule.alpha:g}, looks at "
             f"{looks} seeds per cell):"]
    for entry in judge(sweep, trials, run_dir, rule):
        what = _what(entry) + entry.lost_text()
        if entry.baseline:
            lines.append(f"  baseline   n={len(entry.seeds):<3} {what}")
            continue
        said = entry.verdict.text() if entry.verdict is not None else "undecided (a round under way)"
        if entry.verdict is not None and not entry.verdict.resolved and len(entry.seeds) >= rule.max_seeds:
            said += f" at the cap ({rule.max_seeds} seeds)"
        lines.append(f"  {said:<24} n={len(entry.seeds):<3} {what}")
    return lines


def emit_followup(sweep_config: dict[str, Any], judged: list[Judged], rule: Rule, path: Path) -> str:
    """A W&B sweep file for the next round of a finished sweep: the unresolved cells below the cap and the baseline
    x the next ``step`` seeds (a W&B server fixes a sweep's grid, so the next round is a sweep of its own). A cell's
    count is of its finished seeds (paired with the baseline's); the new seeds are none of those tried, lost ones
    included. Returns the file's text; SweepError where every cell is resolved or the cells to rerun are not a
    grid."""
    import yaml

    base = next((j for j in judged if j.baseline), None)
    open_cells = [j for j in judged if not j.baseline and j.verdict is not None and not j.verdict.resolved
                  and not j.given_up and len(j.finished) < rule.max_seeds]
    undecided = [j for j in judged if not j.baseline and j.verdict is None]
    if base is None or (not open_cells and not undecided):
        given_up = ", or lost more seeds than it finished" if any(j.given_up for j in judged) else ""
        raise SweepError(f"every cell is resolved (or at --max-seeds{given_up}): no follow-up sweep to write")
    if undecided:
        names = "; ".join(_what(j) for j in undecided)
        raise SweepError(f"cells without a verdict yet (unfinished runs, or fewer than 2 seeds): {names}; finish "
                         "the sweep first")
    wanted = [base, *open_cells]
    given = sweep_config.get("parameters") or {}
    varied = [k for k in base.values if isinstance(given.get(k), dict) and "values" in given[k]]  # not constants
    axes = {k: list({json.dumps(j.values[k]): j.values[k] for j in wanted}.values()) for k in varied}
    grid = 1
    for values in axes.values():
        grid *= len(values)
    if grid != len(wanted):
        raise SweepError(f"the {len(wanted)} cells to rerun (the baseline and the unresolved) are not a grid of "
                         f"the sweep's parameters ({grid} combinations); run them with `sweep --until-resolved` "
                         "instead")
    all_seeds = {s for j in judged for s in j.tried}
    seeds = list(range(max(all_seeds) + 1, max(all_seeds) + 1 + rule.step))
    config = {k: v for k, v in sweep_config.items() if k not in ("parameters", "run_cap")}
    name = str(sweep_config.get("name") or path.stem)
    config["name"] = f"{name}.followup"
    config["description"] = (f"follow-up of {name}: the cells not resolved at ±{100 * rule.half_width:g} points "
                             f"(alpha {rule.alpha:g}) and the baseline, x seeds {seeds[0]}-{seeds[-1]}")
    parameters = {k: spec for k, spec in (sweep_config.get("parameters") or {}).items()
                  if k not in axes and k != SEED}  # constants and the like, as they were
    parameters.update({k: {"values": v} for k, v in axes.items()})
    parameters[SEED] = {"values": seeds}
    config["parameters"] = dict(sorted(parameters.items()))
    config["method"] = "grid"
    cells = "\n".join(f"#   {'baseline' if j.baseline else j.verdict.text()} at n={len(j.finished)}: {_what(j)}"
                      f"{j.lost_text()}" for j in wanted)
    return (f"# Written by `python -m inception_lab sweep --until-resolved --emit-followup`: the next round of {name}"
            f"\n# ({len(wanted)} cells x {len(seeds)} seeds). Run it with `wandb sweep {path.name}`, then compare "
            f"both sweeps' runs together.\n{cells}\n" + yaml.safe_dump(config, sort_keys=False))


def _matches(run: Any, name: str, value: Any) -> int | None:
    """How many config keys of a sweep value ``value`` of parameter ``name`` the run has as given (None: not all)."""
    from inception_lab.compare.cells import freeze
    from inception_lab.run.files import flatten

    flat = flatten(value, name) if isinstance(value, dict) else {name: value}
    if all(freeze(run.config.get(k)) == freeze(v) for k, v in flat.items()):
        return len(flat)
    return None


def trials_of_runs(sweep: Sweep, runs: list[Any]) -> list[Trial]:
    """A W&B sweep's runs as the trials they ran: each run's value of every parameter (the sweep value it matches
    most specifically: ``{aux_weight: 0.0, net: ...}`` over ``{aux_weight: 0.0}``) and its seed."""
    trials = []
    for run in runs:
        values: dict[str, Any] = {}
        for param in sweep.params:
            if param.name == SEED:
                values[SEED] = run.seed
                continue
            if param.kind == "constant":  # the same in every run
                values[param.name] = param.spec["value"]
                continue
            options = param.spec.get("values", [param.spec.get("value")])
            scored = [(m, i) for i, v in enumerate(options) if (m := _matches(run, param.name, v)) is not None]
            if not scored:
                raise SweepError(f"W&B run {run.name}: its config has none of {param.name}'s values {options}")
            values[param.name] = options[max(scored)[1]]
        status = {"finished": "finished", "crashed": "failed", "failed": "failed", "killed": "stopped"}.get(
            run.status, "running")
        trials.append(Trial(run.name, values, status=status))
    return trials

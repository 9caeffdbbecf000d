"""Sweep files (sweeps/*.yaml) and the local runner (``python -m inception_lab sweep``).

Every sweep file is checked against W&B's sweep schema; every trial of every file is rendered the way the W&B agent
renders it and parsed by the CLI with the swept values in place; the trials are W&B's engine's, with or without it
installed; a real sweep runs on the digits, survives a SIGKILL of the runner, and records a crashing trial while the
others finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from inception_lab import cli
from inception_lab.__main__ import main as lab_main
from inception_lab.run.files import flatten
from inception_lab.run.identity import variant_name
from inception_lab.sweep import commands, runner, spec
from inception_lab.sweep import state as sweep_state
from inception_lab.sweep.state import State
from tests.conftest import QUICKSTART, REPO, SHORT, clean_env, validate_wandb_schema

SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))
FULL_FILES = [p for p in SWEEP_FILES if not p.name.endswith(".digits.yaml")]
ABLATIONS = ("filter_sizes", "reduce_widths", "aux_weights", "head_gap_vs_fc")

# W&B's sweep schema (sweeps 0.3.0, config/schema.json), as much of it as these files use
TOP_KEYS = {"apiVersion", "kind", "controller", "description", "program", "job", "image_uri", "entity", "project",
            "method", "command", "name", "run_cap", "metric", "metrics", "scheduler", "early_terminate", "parameters"}
PARAM_KEYS = {"constant": {"value"}, "categorical": {"values"}, "int_uniform": {"min", "max"},
              "uniform": {"min", "max"}, "q_uniform": {"min", "max", "q"}, "log_uniform_values": {"min", "max"},
              "normal": {"mu", "sigma"}, "log_normal": {"mu", "sigma"}}
HYPERBAND_KEYS = {"type", "min_iter", "max_iter", "s", "eta", "strict"}


def _id(path: Path) -> str:
    return path.name


def _plain(value: Any) -> Any:
    """Tuples as lists, as JSON has them: the CLI turns typed tuples into tuples."""
    return json.loads(json.dumps(value, default=list))


def _trials(s: spec.Sweep, n_drawn: int = 3) -> list[dict[str, Any]]:
    """Every grid cell; for random and bayes, a few draws from the same distributions. A full-size (CIFAR-10)
    form keeps one seed per cell: it builds a 6M-parameter network per trial (0.7 s), and its digits form, which
    has the same cells (test_digits_form_sweeps_the_same_cells), goes through every seed."""
    if s.method != "grid":
        return spec.random_values(s, n_drawn, seed=0)
    cells = spec.grid_values(s)
    if s.path.name.endswith(".digits.yaml"):
        return cells
    first_seed = cells[0].get("seed_everything")
    return [c for c in cells if c.get("seed_everything") == first_seed]


# ---- the sweep files ---------------------------------------------------------------------------------------------
def test_every_ablation_has_a_full_and_a_digits_form() -> None:
    names = {p.name for p in SWEEP_FILES}
    for stem in (*ABLATIONS, "lr_wd_bayes"):
        assert {f"{stem}.yaml", f"{stem}.digits.yaml"} <= names


@pytest.mark.parametrize("path", SWEEP_FILES, ids=_id)
def test_sweep_file_follows_wandb_schema(path: Path) -> None:
    text = path.read_text()
    config = yaml.safe_load(text)
    assert set(config) <= TOP_KEYS, f"keys W&B rejects (additionalProperties: false): {set(config) - TOP_KEYS}"
    assert config["method"] in ("grid", "random", "bayes")
    assert config["metric"] == {"name": "val/acc_best", "goal": "maximize"}
    assert config["name"] == path.name.removesuffix(".yaml")
    s = spec.load_sweep(path)  # infers each parameter's distribution as W&B's schema does
    for p in s.params:
        assert set(p.spec) - {"distribution"} <= PARAM_KEYS[p.kind], (p.name, p.spec)
    # a block list (a flow list holding ${env} is invalid YAML), the values through the agent's JSON file
    assert "\ncommand:\n  - ${env}\n" in text
    command = config["command"]
    assert all(isinstance(c, str) for c in command)
    assert command[command.index("${args_json_file}") - 1] == "--config"
    assert command[:5] == ["${env}", "python", "-m", "inception_lab", "fit"]
    experiment = command[command.index("--config") + 1]
    assert (REPO / experiment).is_file()
    assert experiment == ("experiments/quickstart.yaml" if ".digits" in path.name else
                          "experiments/googlenet_cifar10.yaml")
    if config["method"] == "grid":
        assert len(config["parameters"]["seed_everything"]["values"]) >= 3
        assert len(config["parameters"]) == 2  # one ablation axis x seeds
    else:
        assert isinstance(config["run_cap"], int) and config["run_cap"] > 0
        assert {p.kind for p in s.params} == {"log_uniform_values"}
        hyperband = config["early_terminate"]
        assert hyperband["type"] == "hyperband" and set(hyperband) <= HYPERBAND_KEYS
        assert "min_iter" in hyperband or {"max_iter", "s"} <= set(hyperband)
    # opens with what it ablates and the commands that run it
    header = text[:text.index("\nname:")]
    assert all(line.startswith("#") for line in header.splitlines())
    assert f"python -m inception_lab sweep sweeps/{path.name}" in header
    assert "wandb sweep sweeps/" in header and "wandb agent" in header


@pytest.mark.parametrize("path", SWEEP_FILES, ids=_id)
def test_sweep_file_validates_with_wandb_schema_json(path: Path) -> None:
    """The engine's own JSON schema, when the optional ``sweeps`` package is installed (it pins numpy<2)."""
    validate_wandb_schema(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("stem", (*ABLATIONS, "lr_wd_bayes"))
def test_digits_form_sweeps_the_same_cells(stem: str) -> None:
    full = yaml.safe_load((REPO / "sweeps" / f"{stem}.yaml").read_text())
    small = yaml.safe_load((REPO / "sweeps" / f"{stem}.digits.yaml").read_text())
    assert small["method"] == full["method"] and small["metric"] == full["metric"]
    if full["method"] == "grid":
        assert small["parameters"] == full["parameters"]
    else:
        assert small["parameters"].keys() == full["parameters"].keys()


def test_grid_cells_cover_the_axes_as_asked() -> None:
    def axis(stem: str, key: str) -> list[Any]:
        return yaml.safe_load((REPO / "sweeps" / f"{stem}.yaml").read_text())["parameters"][key]["values"]

    assert axis("filter_sizes", "model.net.init_args.filter_sizes") == [[3, 5], [3, 3], [3, [3, 3]], [3, 7]]
    assert axis("reduce_widths", "model.net.init_args.reduce_width_mult") == [0.25, 0.5, 1.0, 2.0, "naive"]
    assert axis("head_gap_vs_fc", "model.net.init_args.head") == ["gap", "fc"]
    aux = axis("aux_weights", "model")
    assert [v["aux_weight"] for v in aux] == [0.0, 0.1, 0.3, 1.0, 0.0]
    assert aux[-1]["net"] == {"init_args": {"aux_positions": []}} and all("net" not in v for v in aux[:-1])
    seeds = axis("aux_weights", "seed_everything")
    assert len(seeds) >= 5 and len(set(seeds)) == len(seeds)  # enough seeds per cell to answer (issue 13)
    cells = spec.grid_values(spec.load_sweep(REPO / "sweeps" / "aux_weights.yaml"))
    n = 5 * len(seeds)
    assert len(cells) == n and len({json.dumps(c, sort_keys=True) for c in cells}) == n  # no duplicate cells


# ---- every trial through the CLI, rendered as the agent renders it ---------------------------------------------
def test_rendering_is_the_wandb_agents(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every macro the agent knows, filled in as ``Agent._command_run`` fills it (``python`` is this interpreter)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    monkeypatch.setenv("SWEEP_TEST_VAR", "from-env")
    values = {"model": {"aux_weight": 0.0, "net": {"init_args": {"aux_positions": []}}}, "a": None, "b": True,
              "c": False, "model.net.init_args.filter_sizes": [3, [3, 3]], "r": "naive", "seed_everything": 1}
    theirs = create_sweep_command_args({"args": {k: {"value": v} for k, v in values.items()}})
    template = ["${env}", "python", "${interpreter}", "${program}", "--x=${envvar:SWEEP_TEST_VAR}", "${args}",
                "${args_no_hyphens}", "${args_no_boolean_flags}", "${args_json_file}", "${args_json}"]
    rendered = commands.render_command(template, values, tmp_path / "args.json", program="train.py")
    assert rendered == ["/usr/bin/env", sys.executable, sys.executable, "train.py", "--x=from-env", *theirs["args"],
                        *theirs["args_no_hyphens"], *theirs["args_no_boolean_flags"], str(tmp_path / "args.json"),
                        *theirs["args_json"]]
    assert "--a=None" in rendered  # why the sweep files use ${args_json_file}, not ${args}
    assert template[4] == "--x=${envvar:SWEEP_TEST_VAR}"  # wandb fills ${envvar:X} in place: on a copy
    commands.write_args_json(tmp_path / "args.json", values)
    assert (tmp_path / "args.json").read_text() == theirs["args_json"][0]
    assert commands.render_command([], {"a": 1}, tmp_path / "x", program="t.py") == [
        "/usr/bin/env", sys.executable, "t.py", "--a=1"]  # no command: the agent's default


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The configs ``cli.parse`` returns, in order (spied on, so each trial is seen parsed once)."""
    seen: list[Any] = []
    real = cli.parse

    def spy(args: list[str]) -> Any:
        result = real(args)
        seen.append(result[2])
        return result

    monkeypatch.setattr(cli, "parse", spy)
    return seen


@pytest.mark.parametrize("path", SWEEP_FILES, ids=_id)
def test_every_trial_parses_with_its_values(path: Path, tmp_path: Path, parsed: list[Any]) -> None:
    """The runner's own check (``check_trials``) of every cell's trials: the CLI gets the values intact, the trial
    is named as the CLI names the run, after its index. One seed a cell, and every seed of the first cell (a cell's
    seeds differ in ``seed_everything`` alone: 5 parses instead of 25 for a digits sweep)."""
    s = spec.load_sweep(path)
    assert commands.cli_args(commands.render_command(s.command, {}, tmp_path / "a.json"))[0] == "fit"
    experiment = yaml.safe_load((REPO / s.command[s.command.index("--config") + 1]).read_text())
    cells: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for i, values in enumerate(_trials(s)):
        cells.setdefault(json.dumps({k: v for k, v in values.items() if k != "seed_everything"}, sort_keys=True,
                                    default=str), []).append((i, values))
    first, *others = cells.values()
    trials = sorted(first + [cell[0] for cell in others])
    names = commands.check_trials(s, tmp_path, trials)
    assert len(parsed) == len(trials) == len(set(names))
    for (i, values), config, name in zip(trials, parsed, names):
        swept = flatten(values)
        for key, value in swept.items():
            assert _plain(config[key]) == _plain(value), (path.name, key)
        # a nested value merges onto the experiment: the keys it does not name keep the experiment's values
        for key in ("model.aux_weight", "model.net.init_args.stem", "model.net.init_args.width_mult",
                    "model.optimizer.init_args.lr", "model.optimizer.init_args.weight_decay", "data.class_path"):
            if key not in swept and key in flatten(experiment):
                assert _plain(config[key]) == flatten(experiment)[key], (path.name, key)
        if "model" in values and "net" not in values["model"]:
            assert tuple(config["model.net.init_args.aux_positions"]) == ("4a", "4d")
        assert name == "-".join(p for p in (f"{i:03d}", variant_name(config.variant),
                                            f"seed{config.seed_everything}") if p)
        assert set(config.variant) <= {k for k in swept if k != "seed_everything"}, (path.name, config.variant)
        assert config.seed_everything == values.get("seed_everything", experiment.get("seed_everything"))


def test_none_and_strings_reach_the_cli_intact(tmp_path: Path, parsed: list[Any]) -> None:
    """What ``${args}`` would spoil (None as 'None'), through ``${args_json_file}``."""
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump({"method": "grid", "parameters": {
        "model.lr_scheduler": {"value": None}, "model.net.init_args.reduce_width_mult": {"values": ["naive", 0.5]},
        "model.net.init_args.filter_sizes": {"value": [3, [3, 3]]}},
        "command": ["${env}", "python", "-m", "inception_lab", "fit", "--config", "experiments/quickstart.yaml",
                    "--config", "${args_json_file}"]}))
    s = spec.load_sweep(path)
    names = commands.check_trials(s, tmp_path, list(enumerate(spec.grid_values(s))))
    assert [c["model.net.init_args.reduce_width_mult"] for c in parsed] == ["naive", 0.5]
    assert all(c["model.lr_scheduler"] is None for c in parsed)
    assert all(_plain(c["model.net.init_args.filter_sizes"]) == [3, [3, 3]] for c in parsed)
    assert names[0].startswith("000-") and "reduce_width_mult=naive" in names[0] and "filter_sizes=3x3x3" in names[0]


def test_no_aux_heads_cell_prints_as_merged_config(tmp_path: Path, cli: Any) -> None:
    """The nested ``model`` value through the real CLI (``--print_config``) and the network it builds."""
    values = {"model": {"aux_weight": 0.0, "net": {"init_args": {"aux_positions": []}}}, "seed_everything": 2}
    commands.write_args_json(tmp_path / "args.json", values)
    code, stdout, err = cli(["fit", "--config", "experiments/quickstart.yaml", "--config", str(tmp_path / "args.json"),
                             "--print_config"], cwd=REPO)
    assert code == 0, err[-2000:]
    config = yaml.safe_load(stdout)
    assert config["seed_everything"] == 2 and config["model"]["aux_weight"] == 0.0
    net = config["model"]["net"]["init_args"]
    assert net["aux_positions"] == [] and net["stem"] == "cifar" and net["width_mult"] == 0.125
    assert config["model"]["optimizer"]["init_args"]["lr"] == 0.004


CLI_FORMS = {  # every way a sweep file's command runs the inception_lab CLI
    "module": {"command": ["${env}", "python", "-m", "inception_lab"]},
    "console_script": {"command": ["${env}", "inception-lab"]},  # pyproject's [project.scripts]
    "program": {"program": "inception_lab/__main__.py", "command": ["${env}", "${interpreter}", "${program}"]},
}


def _form_sweep(tmp_path: Path, form: str, parameters: dict[str, Any], *args: str) -> Path:
    path = tmp_path / "forms.yaml"
    path.write_text(yaml.safe_dump({
        "name": "forms", "method": "grid", "metric": {"name": "val/acc_best", "goal": "maximize"},
        "parameters": parameters, **CLI_FORMS[form],
        "command": [*CLI_FORMS[form]["command"], "fit", "--config", "experiments/quickstart.yaml", *args, "--config",
                    "${args_json_file}"]}, sort_keys=False))
    return path


@pytest.mark.parametrize("form", CLI_FORMS)
def test_every_form_of_the_cli_is_checked_and_told_its_run(form: str, tmp_path: Path, cli: Any) -> None:
    """Whatever form the command gives the CLI, its trials are parsed by the CLI before anything runs (a dry run
    said "all valid" for ``aux_weight: abc`` in any form but ``-m inception_lab``) and told their run directory."""
    path = _form_sweep(tmp_path, form, {"model.aux_weight": {"values": [0.3, "abc"]}})
    code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"], cwd=REPO)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "trial 001-aux_weight=abc" in err and "model.aux_weight" in err, err
    assert not (tmp_path / "out").exists()
    command = commands.trial_command(spec.load_sweep(path), tmp_path / "run", {"model.aux_weight": 0.3})
    assert commands.cli_args(command)[:3] == ["fit", "--config", "experiments/quickstart.yaml"]
    assert command[-4:] == ["--run_dir", str(tmp_path / "run"), "--wandb.group", "forms"]


def test_another_program_gets_the_agents_command_line_alone(tmp_path: Path) -> None:
    """A program that is not the CLI gets the command line the W&B agent gives it (here its default, ``${env}
    ${interpreter} ${program} ${args}``), nothing appended, and none of the runner's variables; it keeps no run
    record, so its exit code says whether it finished."""
    program = tmp_path / "train.py"
    program.write_text("import json, os, sys; print(json.dumps([sys.argv, 'INCEPTION_LAB_SWEEP_CLAIM' in os.environ]))")
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump({"name": "other", "method": "grid", "program": str(program),
                                    "metric": {"name": "val/acc_best", "goal": "maximize"},
                                    "parameters": {"lr": {"values": [0.1, 0.2]}}}))
    out = tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    trials = _state(out)["trials"]
    assert [(t["name"], t["status"], t["starts"]) for t in trials] == [("000-lr=0.1", "finished", 1),
                                                                        ("001-lr=0.2", "finished", 1)]
    for t in trials:
        printed = (out / "runs" / t["name"] / "trial.log").read_text().splitlines()[-1]
        assert json.loads(printed) == [[str(program), f"--lr={t['values']['lr']}"], False]


# ---- which trials: W&B's engine, or the fallback without it ---------------------------------------------------------
@pytest.fixture
def engine() -> Any:
    sweeps = spec.engine()
    if sweeps is None:
        pytest.skip("W&B's sweeps engine is not installed (pip install 'inception-lab[sweeps]')")
    return sweeps


@pytest.fixture(params=["engine", "fallback"])
def either(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with W&B's engine (where installed) and with the fallback."""
    if request.param == "engine":
        request.getfixturevalue("engine")
    else:
        _without_engine(monkeypatch)
    return request.param


def _without_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spec, "engine", lambda required=False: None)


def test_grid_order_is_the_sweep_files(either: str) -> None:
    s = spec.load_sweep(REPO / "sweeps" / "filter_sizes.yaml")
    cells = spec.grid_values(s)
    seeds = len(s.config["parameters"]["seed_everything"]["values"])
    assert [(c["model.net.init_args.filter_sizes"], c["seed_everything"]) for c in cells[:seeds + 1]] == [
        *(([3, 5], k) for k in range(seeds)), ([3, 3], 0)]  # every seed of a cell, then the next cell
    assert spec.grid_values(s) == cells  # the same on every start: a trial's index says which cell it runs


@pytest.mark.parametrize("path", [p for p in SWEEP_FILES if "bayes" not in p.name] + ["mixed"], ids=str)
def test_fallback_grid_is_the_engines(path: Path | str, tmp_path: Path, engine: Any,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "mixed":  # every type grid allows; a whole float that equals an int value is a duplicate cell
        path = tmp_path / "mixed.yaml"
        path.write_text(yaml.safe_dump({"method": "grid", "parameters": {
            "n": {"min": 1, "max": 3}, "q": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
            "c": {"value": [3, [3, 3]]}, "v": {"values": [1, 1.0, "x", {"a": 1}]}}}))
    s = spec.load_sweep(Path(path))
    theirs = spec.grid_values(s)
    _without_engine(monkeypatch)
    assert spec.grid_values(s) == theirs


def test_fallback_random_draws_are_the_engines(tmp_path: Path, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    distributions = {
        "uniform": {"min": 0.5, "max": 2.0}, "q_uniform": {"min": 0, "max": 10, "q": 2},
        "log_uniform": {"min": -3.0, "max": 1.0}, "q_log_uniform": {"min": 0.0, "max": 3.0, "q": 0.5},
        "log_uniform_values": {"min": 1e-4, "max": 1e-1}, "q_log_uniform_values": {"min": 1.0, "max": 100.0, "q": 5},
        "int_uniform": {"min": -2, "max": 4}, "categorical": {"values": ["gap", "fc", [3, 3]]},
        "constant": {"value": {"a": 1}}}
    assert set(distributions) == set(spec.RANDOM_TYPES)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"method": "random", "run_cap": 5, "parameters": {
        k: {"distribution": k, **v} for k, v in distributions.items()}}))
    s = spec.load_sweep(path)
    theirs = spec.random_values(s, 300, seed=3)
    _without_engine(monkeypatch)
    ours = spec.random_values(s, 300, seed=3)
    assert [list(d) for d in ours] == [list(d) for d in theirs]
    for a, b in zip(ours, theirs):
        for key in a:
            close = a[key] == pytest.approx(b[key], rel=1e-12) if isinstance(b[key], float) else a[key] == b[key]
            assert close and type(a[key]) is type(b[key]), key  # pytest >= 9 refuses approx of a str
    path.write_text(yaml.safe_dump({"method": "random", "run_cap": 5, "parameters": {"x": {"distribution": "normal"}}}))
    with pytest.raises(spec.SweepError, match=r"x is normal: drawing it needs W&B's sweeps engine: pip install"):
        spec.random_values(spec.load_sweep(path), 1, seed=0)


def test_random_draws_are_seeded_and_in_range(tmp_path: Path, either: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"method": "random", "run_cap": 50, "parameters": {
        "lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
        "wd": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2},
        "n": {"min": 1, "max": 3}, "head": {"values": ["gap", "fc"]}, "k": {"value": [3, [3, 3]]}},
        "command": ["python", "train.py", "${args}"]}))
    s = spec.load_sweep(path)
    draws = spec.random_values(s, 50, seed=0)
    assert draws == spec.random_values(s, 50, seed=0) != spec.random_values(s, 50, seed=1)
    assert spec.random_values(s, 10, seed=0) == draws[:10]  # a larger --run-cap extends, never redraws
    assert all(1e-4 <= d["lr"] <= 1e-1 and d["wd"] % 2 == 0 and d["n"] in (1, 2, 3) for d in draws)
    assert {d["head"] for d in draws} == {"gap", "fc"} and all(d["k"] == [3, [3, 3]] for d in draws)
    json.dumps(draws)  # plain Python values for state.json (the engine gives numpy scalars)


BAD_SWEEPS = {
    "missing": (None, "no such sweep file"),
    "yaml": ("method: grid\nparameters: {a: [1, 2\n", "invalid YAML"),
    "method": ("method: hill_climb\nparameters: {a: {values: [1]}}\n", "method='hill_climb'"),
    "continuous_grid": ("method: grid\nparameters: {lr: {distribution: log_uniform_values, min: 0.001, max: 0.1}}\n",
                        "lr is log_uniform_values: grid allows only"),
    "random_no_cap": ("method: random\nparameters: {lr: {min: 0.1, max: 1.0}}\ncommand: [python, t.py, '${args}']\n",
                      "set run_cap"),
    "macro": ("method: grid\nparameters: {a: {values: [1]}}\ncommand: [python, '${arg}']\n", "unknown macro"),
    "checkpoint": (b"PK\x03\x04\x00\x00\x08\x08\x00\x00\xa5\x8b\x9c\xff", "not UTF-8 text (a binary file"),
    "directory": (..., "a directory, not a sweep file"),
    "duplicate_key": ("method: grid\nparameters: {a: {values: [1]}}\nmethod: random\n",
                      "invalid YAML (line 3): duplicate key 'method' (the last one would win, silently)"),
}


@pytest.mark.parametrize("case", BAD_SWEEPS)
def test_bad_sweep_is_one_line_error(case: str, tmp_path: Path, cli: Any) -> None:
    text, message = BAD_SWEEPS[case]
    path = tmp_path / "s.yaml"
    if text is ...:
        path.mkdir()
    elif text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_trial_config_aborts_before_anything_runs(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "method": "grid", "parameters": {
        "model.net.init_args.head": {"values": ["gap", "gapp"]}, "seed_everything": {"values": [0]}},
        "command": ["${env}", "python", "-m", "inception_lab", "fit", "--config", "experiments/quickstart.yaml",
                    "--config", "${args_json_file}"]}, sort_keys=False))
    code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"], cwd=REPO)
    assert code == 2
    dry = err.strip().splitlines()
    code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out")], cwd=REPO)
    assert code == 2 and "Traceback" not in err
    for error in (dry, err.strip().splitlines()):
        assert len(error) == 1, error
        assert "trial 001-head=gapp-seed0" in error[0] and "model.net.init_args.head" in error[0], error
    assert not (tmp_path / "out").exists()


def test_bayes_without_engine_says_how_to_install(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sweeps", None)  # as if the engine were not installed: import fails
    code, _, err = cli(["sweep", str(REPO / "sweeps" / "lr_wd_bayes.digits.yaml"), "--out", str(tmp_path / "o")])
    assert code == 2
    assert "pip install 'inception-lab[sweeps]'" in err


def test_a_sweep_file_with_new_comments_continues_its_directory(tmp_path: Path, cli: Any) -> None:
    """The sweep directory holds the sweep as first run: a sweep file whose comments changed since (its protocol
    header, its timings) is the same sweep; one whose values changed is refused, naming both files."""
    path = tmp_path / "s.yaml"
    config = {"name": "s", "method": "grid", "parameters": {"seed_everything": {"values": [0, 1]}},
              "metric": {"name": "val/acc_best", "goal": "maximize"},
              "command": ["python", "-m", "inception_lab", "fit", "--config", str(REPO / "experiments/quickstart.yaml"),
                          "--config", "${args_json_file}"]}
    path.write_text("# measured: 1 min\n" + yaml.safe_dump(config))
    out = tmp_path / "out"
    assert cli(["sweep", str(path), "--out", str(out), "--dry-run"])[0] == 0
    out.mkdir(exist_ok=True)
    (out / "sweep.yaml").write_text(path.read_text())
    path.write_text("# measured again: 2 min\n" + yaml.safe_dump(config))
    code, _, err = cli(["sweep", str(path), "--out", str(out), "--dry-run"])
    assert code == 0, err
    config["parameters"]["seed_everything"]["values"] = [0, 1, 2]
    path.write_text(yaml.safe_dump(config))
    code, _, err = cli(["sweep", str(path), "--out", str(out), "--dry-run"])
    assert code == 2 and f"{out} holds a different sweep ({out / 'sweep.yaml'} differs from {path})" in err, err


def test_interrupted_trial_resumes_from_last_checkpoint(tmp_path: Path) -> None:
    """A fake CLI behind the real runner, named as W&B's ``${interpreter} ${program}`` names the CLI (its
    ``inception_lab/__main__.py``; it records its argv and writes a finished summary.json): a trial interrupted after
    a checkpoint resumes, one that finished meanwhile is kept, a new one starts."""
    program = tmp_path / "inception_lab" / "__main__.py"
    program.parent.mkdir()
    program.write_text("import json, pathlib, sys; d = pathlib.Path(sys.argv[sys.argv.index('--run_dir') + 1]); "
                       "(d / 'argv.json').write_text(json.dumps(sys.argv)); "
                       "(d / 'summary.json').write_text(json.dumps({'status': 'finished', 'metrics': "
                       "{'val/acc_best': 0.5}}))")
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump({"name": "fake", "method": "grid", "program": str(program),
                                    "parameters": {"seed_everything": {"values": [1, 2, 3]}},
                                    "metric": {"name": "val/acc_best", "goal": "maximize"},
                                    "command": ["${env}", "${interpreter}", "${program}", "fit", "--config",
                                                str(QUICKSTART), "--config", "${args_json_file}"]}))
    out = tmp_path / "out"
    names = ["000-seed1", "001-seed2", "002-seed3"]
    # the state a SIGKILL leaves: one trial finished, one interrupted after a checkpoint, one not started
    (out / "runs" / names[1] / "checkpoints").mkdir(parents=True)
    (out / "runs" / names[1] / "checkpoints" / "last.ckpt").write_bytes(b"")
    (out / "runs" / names[1] / "summary.json").write_text('{"status": "running"}')
    (out / "runs" / names[0]).mkdir()
    (out / "runs" / names[0] / "summary.json").write_text('{"status": "finished", "metrics": {"val/acc_best": 0.9}}')
    (out / "sweep.yaml").write_text(path.read_text())
    (out / "state.json").write_text(json.dumps({"seed": 0, "trials": [
        {"name": names[0], "values": {"seed_everything": 1}, "status": "running", "starts": 1},
        {"name": names[1], "values": {"seed_everything": 2}, "status": "running", "starts": 1}]}))
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    state = json.loads((out / "state.json").read_text())
    assert [(t["status"], t["starts"]) for t in state["trials"]] == [("finished", 1), ("finished", 2),
                                                                     ("finished", 1)]
    assert state["trials"][0]["metrics"] == {"val/acc_best": 0.9}  # finished while the runner was dead: kept
    assert not (out / "runs" / names[0] / "argv.json").exists()
    resumed = json.loads((out / "runs" / names[1] / "argv.json").read_text())
    assert resumed[0] == str(program) and resumed[-2:] == ["--ckpt_path", "last"]
    fresh = json.loads((out / "runs" / names[2] / "argv.json").read_text())
    assert fresh == [str(program), "fit", "--config", str(QUICKSTART), "--config",
                     str(out / "runs" / names[2] / "args.json"), "--run_dir", str(out / "runs" / names[2]),
                     "--wandb.group", "fake"]


def test_bayes_draws_are_seeded_and_hyperband_is_asked(tmp_path: Path, engine: Any) -> None:
    """Bayes search and hyperband through the engine, behind a fake trial program that logs three epochs."""
    program = ("import json, pathlib, sys; d = pathlib.Path(sys.argv[-1]).parent; "
               "lr = float(next(a for a in sys.argv if a.startswith('--lr=')).split('=')[1]); "
               "rows = ''.join(f'{e},{lr * e}\\n' for e in (1, 2, 3)); "
               "(d / 'metrics.csv').write_text('epoch,val/acc_best\\n' + rows); "
               "summary = {'status': 'finished', 'metrics': {'val/acc_best': 3 * lr}}; "
               "(d / 'summary.json').write_text(json.dumps(summary))")
    path = tmp_path / "b.yaml"
    path.write_text(yaml.safe_dump({"name": "b", "method": "bayes", "run_cap": 3,
                                    "metric": {"name": "val/acc_best", "goal": "maximize"},
                                    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
                                    "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-3,
                                                          "max": 0.1}},
                                    "command": ["python", "-c", program, "${args}", "${args_json_file}"]}))
    calls: list[int] = []
    real = spec.hyperband_stops
    with pytest.MonkeyPatch.context() as m:
        m.setattr(spec, "hyperband_stops", lambda s, t: calls.append(len(t)) or real(s, t))
        assert lab_main(["sweep", str(path), "--out", str(tmp_path / "a"), "--seed", "5"]) == 0
    assert calls  # asked after every poll
    assert lab_main(["sweep", str(path), "--out", str(tmp_path / "b"), "--seed", "5"]) == 0
    runs = [_state(tmp_path / d)["trials"] for d in "ab"]
    assert [t["values"] for t in runs[0]] == [t["values"] for t in runs[1]] and len(runs[0]) == 3
    assert all(t["status"] == "finished" and t["name"].startswith(f"{i:03d}-lr=") for i, t in enumerate(runs[0]))


# ---- real sweeps on the digits ----------------------------------------------------------------------------------
def _tiny_sweep(tmp_path: Path, name: str, parameters: dict[str, Any]) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "method": "grid", "metric": {"name": "val/acc_best", "goal": "maximize"},
        "parameters": parameters,
        "command": ["${env}", "python", "-m", "inception_lab", "fit", "--config", "experiments/quickstart.yaml",
                    *SHORT, "--config", "${args_json_file}"]}, sort_keys=False))
    return path


def _runner(path: Path, out: Path, *flags: str, wandb: str = "offline") -> subprocess.Popen:
    # SIGINT as in a terminal's foreground job: a test suite started in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and Python keeps it so in the child, where Ctrl-C would then do nothing
    return subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out), *flags],
                            cwd=REPO, env={**clean_env(), "WANDB_MODE": wandb}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _state(out: Path) -> dict[str, Any]:
    try:
        return json.loads((out / "state.json").read_text())
    except (OSError, ValueError):
        return {"trials": []}


def _starts_logged(out: Path, trial: str) -> int:
    return (out / "runs" / trial / "trial.log").read_text().count("# start ")


@pytest.mark.slow
def test_small_sweep_runs_in_parallel(tmp_path: Path) -> None:
    path = _tiny_sweep(tmp_path, "tiny", {"model.net.init_args.head": {"values": ["gap", "fc"]},
                                          "seed_everything": {"values": [0, 1]}})
    out = tmp_path / "sweep"
    proc = _runner(path, out, "--parallel", "2")
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log
    assert (out / "sweep.yaml").read_text() == path.read_text()
    state = _state(out)
    names = ["000-seed0", "001-seed1", "002-head=fc-seed0", "003-head=fc-seed1"]  # gap: the experiment's own head
    assert [t["name"] for t in state["trials"]] == names
    for trial in state["trials"]:
        run_dir = out / "runs" / trial["name"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert trial["status"] == summary["status"] == "finished" and trial["starts"] == 1
        assert trial["metrics"] == summary["metrics"] and 0 <= trial["metrics"]["val/acc_best"] <= 1
        assert json.loads((run_dir / "args.json").read_text()) == trial["values"]
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["model"]["net"]["init_args"]["head"] == trial["values"]["model.net.init_args.head"]
        assert config["seed_everything"] == trial["values"]["seed_everything"]
        assert config["run_dir"] == str(run_dir) and config["wandb"]["group"] == "tiny"
    starts = [line for line in log.splitlines() if " start " in line]
    assert "(cpu0" in starts[0] and "(cpu1" in starts[1]  # two at once
    assert "per cell, mean ± std over seeds" in log and 'model.net.init_args.head="fc"' in log



@pytest.mark.slow
@pytest.mark.parametrize("form", ["console_script", "program"])
def test_trials_run_whatever_form_gives_the_cli(form: str, tmp_path: Path) -> None:
    """A trial run by the console script or by W&B's ``${interpreter} ${program}`` runs as with ``-m inception_lab``:
    the runner lets its fit take the run directory (each one failed after 60 s, "a fit is running in it": the runner
    held the directory itself)."""
    path = _form_sweep(tmp_path, form, {"seed_everything": {"value": 0}}, *SHORT)
    out = tmp_path / "sweep"
    env = {**clean_env(), "WANDB_MODE": "disabled", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [trial] = _state(out)["trials"]
    run_dir = out / "runs" / trial["name"]
    assert (trial["name"], trial["status"], trial["starts"]) == ("000-seed0", "finished", 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and [a["status"] for a in summary["attempts"]] == ["finished"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_dir"] == str(run_dir)
    started = (run_dir / "trial.log").read_text().splitlines()[0]
    assert {"console_script": " inception-lab fit ", "program": " inception_lab/__main__.py fit "}[form] in started

@pytest.mark.slow
def test_runner_survives_sigkill_and_records_a_crash(tmp_path: Path) -> None:
    """SIGKILL the runner once a trial finished; start it again: nothing finished runs twice, all trials end; a
    GPU accelerator on this CPU machine passes validation (which builds no trainer) but fails when the fit starts:
    recorded with its error tail. W&B is off here (the test above logs offline): a trial's W&B start and finish cost
    seconds."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the crashing trial would not crash")
    path = _tiny_sweep(tmp_path, "kill", {"trainer.accelerator": {"values": ["cpu", "auto", "gpu"]},
                                          "seed_everything": {"value": 0}})
    out = tmp_path / "sweep"
    proc = _runner(path, out, wandb="disabled")
    deadline = time.monotonic() + 180
    while not any(t["status"] == "finished" for t in _state(out)["trials"]):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.2)
    first = next(t for t in _state(out)["trials"] if t["status"] == "finished")
    summary_file = out / "runs" / first["name"] / "summary.json"
    before = (summary_file.stat().st_mtime_ns, summary_file.read_text())
    time.sleep(1.0)  # the next trial is under way
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    time.sleep(1.0)
    orphans = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, str(out / "runs"))]
    assert not orphans, "a trial outlived its runner"

    proc = _runner(path, out, "--parallel", "2", wandb="disabled")  # the interrupted trial beside the crashing one
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 1, log  # a trial failed
    state = _state(out)
    by_name = {t["name"]: t for t in state["trials"]}
    assert [t["status"] for t in state["trials"]] == ["finished", "finished", "failed"]
    assert by_name[first["name"]]["starts"] == 1 == _starts_logged(out, first["name"])
    assert (summary_file.stat().st_mtime_ns, summary_file.read_text()) == before
    assert by_name[first["name"]]["metrics"] == json.loads(before[1])["metrics"]
    interrupted = state["trials"][1]
    assert interrupted["starts"] == 2 == _starts_logged(out, interrupted["name"])
    crashed = state["trials"][2]
    assert crashed["returncode"] != 0 and "No supported gpu backend found" in crashed["error"]
    assert len(crashed["error"].splitlines()) <= runner.ERROR_TAIL_LINES + 1
    assert f"failed {crashed['name']}" in log


def _cmdline_has(proc_dir: Path, needle: str) -> bool:
    try:
        return needle in (proc_dir / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


@pytest.mark.slow
def test_ctrl_c_interrupts_a_sweep_and_the_restart_resumes(tmp_path: Path) -> None:
    """Ctrl-C on the runner: the trial in flight is recorded "interrupted" (not failed) and the runner exits 130;
    the same command again resumes that trial from its last.ckpt and runs the rest. Every trial finishes, with as
    many epochs trained in total as an uninterrupted sweep, plus at most the one that was in flight."""
    path = _tiny_sweep(tmp_path, "ctrlc", {"seed_everything": {"values": [0, 1]}, "trainer.max_epochs": {"value": 2},
                                           "trainer.limit_train_batches": {"value": 3}})
    out = tmp_path / "sweep"
    proc = _runner(path, out, wandb="disabled")
    last = out / "runs/000-seed0/checkpoints/last.ckpt"
    deadline = time.monotonic() + 240
    while not last.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends it
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "interrupted; run the same command again" in log, log
    assert [t["status"] for t in _state(out)["trials"]] == ["interrupted", "pending"]
    first = json.loads((out / "runs/000-seed0/summary.json").read_text())
    assert first["status"] == "interrupted" and first["error"] == "interrupted by SIGTERM"  # the runner's stop

    proc = _runner(path, out, wandb="disabled")
    log, _ = proc.communicate(timeout=480)
    assert proc.returncode == 0, log
    state = _state(out)
    assert [(t["status"], t["starts"]) for t in state["trials"]] == [("finished", 2), ("finished", 1)]
    attempts = {t["name"]: json.loads((out / "runs" / t["name"] / "summary.json").read_text())["attempts"]
                for t in state["trials"]}
    assert [a["status"] for a in attempts["000-seed0"]] == ["interrupted", "finished"]
    assert attempts["000-seed0"][1]["first_epoch"] >= 1  # resumed, not trained again from epoch 0
    assert 2 * 2 <= sum(a["epochs"] for runs in attempts.values() for a in runs) <= 2 * 2 + 1
    starts = [ln for ln in (out / "runs/000-seed0/trial.log").read_text().splitlines() if ln.startswith("# start")]
    assert ["--ckpt_path last" in ln for ln in starts] == [False, True]


# ---- many runners on one sweep directory ---------------------------------------------------------------------------
# A fake trial, another program than the CLI (its run directory: its ${args_json_file}'s): appends its argv to
# <run>/ran.jsonl (one line per execution), says "running" with a last.ckpt, works a while, then finishes with a
# metric from its values.
_SLOW_TRIAL = ("import json, pathlib, sys, time; d = pathlib.Path(sys.argv[-1]).parent; "
               "open(d / 'ran.jsonl', 'a').write(json.dumps(sys.argv) + '\\n'); "
               "(d / 'checkpoints').mkdir(exist_ok=True); (d / 'checkpoints/last.ckpt').write_bytes(b''); "
               "(d / 'summary.json').write_text(json.dumps({'status': 'running'})); time.sleep({sleep}); "
               "a = float(next(x for x in sys.argv if x.startswith('--a=')).split('=')[1]); "
               "(d / 'summary.json').write_text(json.dumps({'status': 'finished', 'metrics': {'val/acc_best': a}}))")


def _fake_sweep(tmp_path: Path, sleep: float, **config: Any) -> Path:
    path = tmp_path / "many.yaml"
    path.write_text(yaml.safe_dump({"name": "many", "method": "grid", "metric": {"name": "val/acc_best",
                                    "goal": "maximize"}, "parameters": {"a": {"values": [1, 2, 3, 4, 5, 6]}},
                                    "command": ["python", "-c", _SLOW_TRIAL.replace("{sleep}", str(sleep)), "${args}",
                                                "${args_json_file}"],
                                    **config}))
    return path


def _executions(out: Path) -> dict[str, list[list[str]]]:
    return {d.name: [json.loads(line) for line in (d / "ran.jsonl").read_text().splitlines()]
            for d in sorted((out / "runs").iterdir()) if (d / "ran.jsonl").is_file()}


def test_a_runner_of_other_programs_imports_no_torch(tmp_path: Path) -> None:
    """The runner reads and writes run records without torch or Lightning (2 s to start, not 12): only checking
    trials of the inception_lab CLI imports them."""
    path, out = _fake_sweep(tmp_path, sleep=0.0), tmp_path / "out"
    code = ("import sys; import inception_lab.sweep as s; code = s.main([sys.argv[1], '--out', sys.argv[2]]); "
            "print(code, *(m in sys.modules for m in ('torch', 'lightning')))")
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(out)], cwd=REPO,
                          env={**clean_env(), "WANDB_MODE": "disabled"}, capture_output=True, text=True, timeout=120)
    assert proc.stdout.splitlines()[-1] == "0 False False", proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [t["status"] for t in _state(out)["trials"]] == ["finished"] * 6


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _all_waiting(procs: list[subprocess.Popen], quiet_s: float = 1.5) -> None:
    """Returns once every process has started (0.5 s of CPU: its imports) and then used none for ``quiet_s``: each
    waits on a lock."""
    deadline, last, since = time.monotonic() + 120, [-1.0] * len(procs), time.monotonic()
    while True:
        now = [_cpu_s(p.pid) for p in procs]
        if any(n - t > 0.03 for n, t in zip(now, last)):
            last, since = now, time.monotonic()
        elif min(now) >= 0.5 and time.monotonic() - since >= quiet_s:
            return
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, [p.poll() for p in procs]
        time.sleep(0.1)


@pytest.mark.slow
def test_two_sweeps_started_at_once_on_one_directory(tmp_path: Path) -> None:
    """Two sweep files with the same values and other commands, their runners started at once on one sweep
    directory (both held at its state's lock, then let go together): one runs every trial, the other is refused in
    one line, decided under the lock (both used to run and split the trials between them)."""
    paths = []
    for who in "AB":
        (tmp_path / who).mkdir()
        paths.append(_fake_sweep(tmp_path / who, sleep=0.0, command=[
            "python", "-c", _SLOW_TRIAL.replace("{sleep}", "0"), f"--who={who}", "${args}", "${args_json_file}"]))
    out = tmp_path / "out"
    out.mkdir()
    hold = ("import sys, time; from inception_lab.run.lock import PathLock; "
            "lock = PathLock(sys.argv[1]); assert lock.acquire(0); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out / "state.json")], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        procs = [_runner(path, out, wandb="disabled") for path in paths]
        _all_waiting(procs)
    finally:
        holder.kill()
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], logs
    won = [p.returncode for p in procs].index(0)
    lost = 1 - won
    assert all("validating 6 trial config(s)" in log for log in logs), logs  # both went past the early check
    assert logs[lost].strip().splitlines()[-1] == (
        f"inception_lab sweep: error: {out} holds a different sweep ({out / 'sweep.yaml'} differs from "
        f"{paths[lost]}): pass --out DIR for a new sweep directory, or delete the old one"), logs[lost]
    assert (out / "sweep.yaml").read_text() == paths[won].read_text()
    assert [(t["status"], t["starts"]) for t in _state(out)["trials"]] == [("finished", 1)] * 6
    runs = _executions(out)
    assert len(runs) == 6 and all(len(r) == 1 and f"--who={'AB'[won]}" in r[0] for r in runs.values()), runs


def test_a_sweep_directory_keeps_its_seed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A random sweep's trials are drawn with its seed: the same directory with another --seed is one line (it used
    to go on silently with the old seed); the same command carries on; a trial whose values are not its draw's is
    one line."""
    path = _fake_sweep(tmp_path, sleep=0.0, method="random", run_cap=2,
                       parameters={"a": {"distribution": "uniform", "min": 0.0, "max": 1.0}})
    out = tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out), "--seed", "1"]) == 0
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out), "--seed", "2"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"inception_lab sweep: error: {out / 'state.json'}: this sweep draws its trials with --seed 1; pass the same "
        "--seed (not 2), or --out DIR for a new sweep directory"]
    assert lab_main(["sweep", str(path), "--out", str(out), "--seed", "1"]) == 0
    state = _state(out)
    state["trials"][1]["values"]["a"] = 0.5
    (out / "state.json").write_text(json.dumps(state))
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out), "--seed", "1"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"inception_lab sweep: error: {out / 'state.json'}: trial {state['trials'][1]['name']} has other values than "
        "the sweep file gives it"]

@pytest.mark.slow
@pytest.mark.parametrize("runners", [2])  # three: test_three_runners_on_a_real_sweep
def test_runners_share_a_sweep_directory(tmp_path: Path, runners: int) -> None:
    """Several runners started at once on one sweep directory: every trial runs once, in one of them, and is
    recorded finished once (each trial claimed under the state's lock before it starts)."""
    path, out = _fake_sweep(tmp_path, sleep=1.0), tmp_path / "out"
    procs = [_runner(path, out, wandb="disabled") for _ in range(runners)]
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * runners, logs
    state = _state(out)
    assert [(t["status"], t["starts"], t["owner"]) for t in state["trials"]] == [("finished", 1, None)] * 6
    assert {name: len(runs) for name, runs in _executions(out).items()} == {t["name"]: 1 for t in state["trials"]}
    started = [line for log in logs for line in log.splitlines() if " start " in line]
    assert len(started) == 6 and sum(bool(" start " in log) for log in logs) >= 2  # shared, not one runner's


@pytest.mark.slow
def test_a_dead_runners_trial_is_claimed_and_resumed(tmp_path: Path) -> None:
    """SIGKILL one of two runners mid-trial: the other carries on; a runner started afterwards claims the dead one's
    trial (its pid is gone) and runs it again in its run directory; every trial finishes once."""
    path, out = _fake_sweep(tmp_path, sleep=4.0), tmp_path / "out"
    a = _runner(path, out, wandb="disabled")
    deadline = time.monotonic() + 60
    while not any(t["status"] == "running" for t in _state(out)["trials"]):
        assert a.poll() is None and time.monotonic() < deadline, a.communicate()[0]
        time.sleep(0.1)
    b = _runner(path, out, wandb="disabled")
    time.sleep(1.5)  # a's trial is under way
    a.send_signal(signal.SIGKILL)
    a.communicate(timeout=30)
    log_b = b.communicate(timeout=120)[0]
    assert b.returncode == 0, log_b
    state = _state(out)
    killed = next(t for t in state["trials"] if t["starts"] == 2)  # a's: reclaimed by b, or by c below
    c = _runner(path, out, wandb="disabled")
    log_c = c.communicate(timeout=120)[0]
    assert c.returncode == 0, log_c
    state = _state(out)
    assert [t["status"] for t in state["trials"]] == ["finished"] * 6
    runs = _executions(out)
    assert len(runs[killed["name"]]) == 2 and runs[killed["name"]][1] == runs[killed["name"]][0]  # as the agent
    # would run it again: another program than the CLI gets no --ckpt_path (its directory and record are kept)
    assert all(len(r) == 1 for name, r in runs.items() if name != killed["name"])


@pytest.mark.slow
def test_bayes_run_cap_holds_across_runners(tmp_path: Path, engine: Any) -> None:
    """Two runners on a bayes sweep with run_cap 4: each draws under the lock given every result: exactly 4 trials,
    no index twice."""
    path = _fake_sweep(tmp_path, sleep=0.5, method="bayes", run_cap=4,
                       parameters={"a": {"distribution": "uniform", "min": 0.0, "max": 1.0}})
    out = tmp_path / "out"
    procs = [_runner(path, out, wandb="disabled") for _ in range(2)]
    logs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    trials = _state(out)["trials"]
    assert len(trials) == 4 and [t["name"][:3] for t in trials] == ["000", "001", "002", "003"]
    assert all(t["status"] == "finished" and t["starts"] == 1 for t in trials)
    assert sorted(_executions(out)) == sorted(t["name"] for t in trials)


@pytest.mark.slow
def test_three_runners_on_a_real_sweep(tmp_path: Path) -> None:
    """Three runners at once on a 4-trial digits sweep (one short epoch a trial, one thread each): every trial
    finished exactly once, with its own config and metrics; no trial failed (the same trial run in two runners at once
    used to fail on each other's files)."""
    path = _tiny_sweep(tmp_path, "three", {"model.net.init_args.head": {"values": ["gap", "fc"]},
                                           "seed_everything": {"values": [0, 1]},
                                           "trainer.limit_train_batches": {"value": 2}})
    out = tmp_path / "sweep"
    procs = [subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out)], cwd=REPO,
                              env={**clean_env(), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    logs = [p.communicate(timeout=540)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], logs
    trials = _state(out)["trials"]
    assert [(t["status"], t["starts"]) for t in trials] == [("finished", 1)] * 4
    for trial in trials:
        assert _starts_logged(out, trial["name"]) == 1
        summary = json.loads((out / "runs" / trial["name"] / "summary.json").read_text())
        assert summary["status"] == "finished" and [a["status"] for a in summary["attempts"]] == ["finished"]
        assert trial["metrics"] == summary["metrics"]


# ---- fencing: a trial runs once, whatever happens to its runner -------------------------------------------------

def _fake_state(tmp_path: Path) -> tuple[spec.Sweep, Path]:
    path, out = _fake_sweep(tmp_path, sleep=0.0), tmp_path / "out"
    sweep = spec.load_sweep(path)
    state = State(out, sweep, 0)
    with state.locked():
        state.trials = [spec.Trial("000-a=1", {"a": 1}), spec.Trial("001-a=2", {"a": 2})]
    return sweep, out


def test_a_claim_taken_while_its_runner_slept_is_never_written_back(tmp_path: Path, monkeypatch) -> None:
    """Runner A claims a trial, then sleeps past its lease (its fit has ended meanwhile); runner B reclaims it and
    runs it. A, awake, finds its token gone: it drops the trial, stops its fit, and writes nothing of it over B's
    claim (it used to write its old claim back)."""
    sweep, out = _fake_state(tmp_path)
    a, b = State(out, sweep, 0), State(out, sweep, 0)
    b.runner = "elsewhere:1"  # another host: only the lease says whether A is alive
    with a.locked():
        trial = a.trials[0]
        assert a.claim(trial)
        trial.status, trial.starts = "running", 1
    a.held.pop(trial.name).release()
    a.starting.clear()  # its fit started and ended: its run directory is free
    data = json.loads((out / "state.json").read_text())
    data["trials"][0]["lease_until"] = time.time() - 1  # A slept past its lease
    (out / "state.json").write_text(json.dumps(data))
    with b.locked():
        b.reconcile()
        taken = runner.next_trial(sweep, b, None)
        assert taken.name == trial.name and b.claim(taken)
        taken.status, taken.starts = "running", 2
    b.held.clear()
    with a.locked():  # A wakes: renews, and would record its trial
        a.renew()
    assert a.lost == [trial.name] and trial.name not in a.mine
    fit = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    running = [runner.Running(trial, fit, "cpu0", time.monotonic())]
    free: list[str] = []
    runner.drop_lost(a, running, free)
    assert fit.wait(timeout=10) == -signal.SIGTERM and running == [] and free == ["cpu0"]
    on_disk = json.loads((out / "state.json").read_text())["trials"][0]
    assert (on_disk["owner"], on_disk["claim"], on_disk["starts"]) == ("elsewhere:1", b.mine[trial.name], 2)


def test_a_fit_whose_claim_was_taken_writes_nothing(tmp_path: Path, cli: Any, monkeypatch) -> None:
    """A trial's fit started by a runner that lost its claim meanwhile checks the claim once it holds its run
    directory: one line, exit 2, nothing written; and a second fit into a run directory a fit holds is refused."""
    state, run_dir = tmp_path / "state.json", tmp_path / "run"
    state.write_text(json.dumps({"trials": [{"name": "000", "values": {}, "claim": "theirs"}]}))
    fit = ["fit", "--config", str(REPO / "experiments/quickstart.yaml"), *SHORT, "--run_dir", str(run_dir)]
    monkeypatch.setenv(sweep_state.CLAIM_ENV, json.dumps({"state": str(state), "trial": "000", "claim": "mine"}))
    code, _, err = cli(fit)
    assert code == 2 and err.strip().splitlines()[-1] == (f"inception_lab fit: error: sweep trial 000: another runner "
                                                          f"holds it now ({state}); this fit stops before writing "
                                                          "anything"), err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]
    monkeypatch.delenv(sweep_state.CLAIM_ENV)
    hold = ("import os, sys, time; from inception_lab.run.lock import run_lock; lock = run_lock(sys.argv[1]); "
            "assert lock.acquire(0); os.ftruncate(lock.fd, 0); "
            "os.write(lock.fd, f'pid {os.getpid()} on here'.encode()); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        code, _, err = cli(fit)
        assert code == 2 and err.strip().splitlines()[-1] == (
            f"inception_lab fit: error: --run_dir {run_dir}: a fit is running in it (pid {holder.pid} on here); wait "
            "for it to end, or start a new run in a new --run_dir"), err
    finally:
        holder.kill()
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]


_HOLD_STATE = ("import sys, time; from pathlib import Path; from inception_lab.sweep import spec; "
               "from inception_lab.sweep.state import State; "
               "s = State(Path(sys.argv[2]), spec.load_sweep(Path(sys.argv[1])), 0)\n"
               "with s.locked():\n    print('held', flush=True); time.sleep(float(sys.argv[3]))")


def test_the_state_lock_cannot_be_deleted_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runner A holds the state's lock; every lock file in the sweep directory is deleted (people delete "stale"
    lock files), and state.json is replaced as a rewrite does: runner B still waits for A. (With filelock's
    state.json.lock, deleting it let B in at once.)"""
    sweep, out = _fake_state(tmp_path)
    (out / "state.json.lock").write_text("")  # a lock file from an older version: nothing holds it
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_STATE, str(sweep.path), str(out), "4"], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "held\n"
    for lock in out.rglob("*.lock"):
        lock.unlink()
    monkeypatch.setattr(sweep_state, "LOCK_WAIT_S", 1.0)
    b = State(out, sweep, 0, read=False)
    started = time.monotonic()
    with pytest.raises(spec.SweepError, match="another runner has held its lock for 1 s"):
        with b.locked():
            pass
    assert time.monotonic() - started >= 0.9
    monkeypatch.setattr(sweep_state, "LOCK_WAIT_S", 30.0)
    with b.locked():  # once A is done
        assert time.monotonic() - started >= 3.5 and [t.name for t in b.trials] == ["000-a=1", "001-a=2"]
    assert holder.wait(timeout=10) == 0


BROKEN_STATES = {
    "truncated": (b'{"seed": 0, "trials": [{"name": "000-a=1", "val', "not valid JSON"),
    "binary": (b"\x80\x02}q\x00(X\x04\x00\x00\x00seedq", "not UTF-8 text (a binary file)"),
    "list": (b"[1, 2]", "not a sweep state (a JSON object with a list of trials)"),
    "trials-not-a-list": (b'{"trials": {"000": 1}}', "not a sweep state"),
    "entry-not-an-object": (b'{"trials": ["000-a=1"]}', "trials[0] is not an object"),
    "unknown-key": (b'{"trials": [{"name": "000-a=1", "values": {"a": 1}, "lease_token": 3}]}',
                    "trials[0] has key 'lease_token', which this version of inception_lab does not write"),
    "bad-status": (b'{"trials": [{"name": "000-a=1", "values": {"a": 1}, "status": "done"}]}',
                   "trials[0]: status 'done'"),
    "empty": (b"", "empty, but"),
}


@pytest.mark.parametrize("shape", BROKEN_STATES)
def test_a_broken_state_json_is_one_line_and_repair_brings_it_back(shape: str, tmp_path: Path, capsys) -> None:
    """A finished sweep, then its state.json broken: one line naming it, the cause and the repair command, exit 2,
    nothing run; ``--repair`` puts its previous good copy back (every trial finished, none run again)."""
    path, out = _fake_sweep(tmp_path, sleep=0.0, run_cap=2), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    good = _state(out)
    raw, why = BROKEN_STATES[shape]
    (out / "state.json").write_bytes(raw)
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"inception_lab sweep: error: {out / 'state.json'}: {why}"), err
    assert err[0].endswith(f"`python -m inception_lab sweep {path} --out {out} --repair` rebuilds it from the "
                           f"previous good copy, {out / 'state.json.prev'}")
    assert lab_main(["sweep", str(path), "--out", str(out), "--repair"]) == 0
    assert f"repaired {out / 'state.json'} from its previous good copy" in capsys.readouterr().out
    assert [(t["name"], t["status"], t["starts"]) for t in _state(out)["trials"]] == [
        (t["name"], "finished", 1) for t in good["trials"]]
    assert (out / "state.json.broken").read_bytes() == raw
    assert all(len(runs) == 1 for runs in _executions(out).values())


def test_repair_rebuilds_a_lost_state_from_the_run_directories(tmp_path: Path, capsys) -> None:
    """state.json and its previous copy both gone (after two trials ran, one failed): ``--repair`` rebuilds the state
    from the runs' args.json, summaries and trial.log; the finished trial is not run again."""
    path, out = _fake_sweep(tmp_path, sleep=0.0, run_cap=2), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    failed = out / "runs" / "001-a=2" / "summary.json"
    failed.write_text(json.dumps({"status": "failed", "error": "CUDA out of memory"}))
    (out / "state.json").unlink()
    (out / "state.json.prev").unlink()
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().endswith(f"rebuilds it from the run directories under {out / 'runs'}")
    assert lab_main(["sweep", str(path), "--out", str(out), "--repair"]) == 1  # the failed trial stays failed
    assert f"repaired {out / 'state.json'} from the run directories" in capsys.readouterr().out
    trials = _state(out)["trials"]
    assert [(t["name"], t["status"], t["starts"]) for t in trials] == [("000-a=1", "finished", 1),
                                                                       ("001-a=2", "failed", 1)]
    assert trials[0]["metrics"] == {"val/acc_best": 1.0} and trials[1]["error"] == "CUDA out of memory"
    assert {name: len(runs) for name, runs in _executions(out).items()} == {"000-a=1": 1, "001-a=2": 1}


def _held(run_dir: Path) -> bool:
    from inception_lab.run.lock import run_lock

    if not (run_dir / ".lock").is_file():
        return False
    lock = run_lock(run_dir)
    free = lock.acquire(timeout=0)
    lock.release()
    return not free


@pytest.mark.slow
def test_a_runner_stopped_past_its_lease_never_doubles_a_trial(tmp_path: Path) -> None:
    """Runner A is SIGSTOPped past its lease while its trial's fit runs on (a stuck NFS call does the same); runner B
    starts: it runs the other trial and leaves A's alone (its fit holds the run directory), never a second fit of it
    (before: B moved the live run aside and started a second fit with the same --run_dir). A, continued, finishes
    its trial: one start, one attempt, one set of checkpoints."""
    path = _tiny_sweep(tmp_path, "stopped", {"trainer.max_epochs": {"values": [40, 1]},
                                             "trainer.limit_train_batches": {"value": 2}})
    out = tmp_path / "sweep"
    env = {**clean_env(), "WANDB_MODE": "disabled", "INCEPTION_LAB_SWEEP_LEASE_S": "3"}

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    a = start()
    deadline = time.monotonic() + 120
    while not (trials := _state(out)["trials"]) or not _held(first := out / "runs" / trials[0]["name"]):
        assert a.poll() is None and time.monotonic() < deadline, a.communicate()[0]
        time.sleep(0.2)
    a.send_signal(signal.SIGSTOP)
    try:
        time.sleep(4)  # past A's lease
        b = start()
        while b.poll() is None:
            assert _starts_logged(out, trials[0]["name"]) == 1 and not (out / "runs" / ".discarded").exists()
            time.sleep(0.2)
        log_b = b.communicate()[0]
        assert b.returncode == 0 and f"start {trials[0]['name']}" not in log_b, log_b
        assert _held(first), "A's fit ended before B had to leave it alone: make its trial longer"
        mid = _state(out)["trials"]
        assert (mid[0]["status"], mid[0]["owner"]) == ("running", trials[0]["owner"]) and \
            (mid[1]["status"], mid[1]["starts"]) == ("finished", 1)
    finally:
        a.send_signal(signal.SIGCONT)
    log_a = a.communicate(timeout=300)[0]
    assert a.returncode == 0, log_a
    done = _state(out)["trials"]
    assert [(t["status"], t["starts"], t["owner"]) for t in done] == [("finished", 1, None)] * 2
    summary = json.loads((first / "summary.json").read_text())
    assert [x["status"] for x in summary["attempts"]] == ["finished"] and summary["attempts"][0]["epochs"] == 40
    assert len(list((first / "checkpoints").glob("best-*.ckpt"))) == 1 and not list(first.rglob("*-v1.ckpt"))
    assert "another runner holds it now" not in log_a


ARRAY_TASK = {"SLURM_JOB_ID": "90", "SLURM_ARRAY_JOB_ID": "88", "SLURM_ARRAY_TASK_ID": "1"}


@pytest.mark.parametrize("signum, slurm_env, requeued", [(signal.SIGUSR1, ARRAY_TASK, True),
                                                         (signal.SIGTERM, ARRAY_TASK, False),
                                                         (signal.SIGUSR1, {"SLURM_JOB_ID": "77"}, False)],
                         ids=["warning", "scancel", "not-an-array-task"])
def test_only_the_time_limit_warning_requeues_an_array_task(signum: int, slurm_env: dict[str, str], requeued: bool,
                                                            tmp_path: Path) -> None:
    """In a SLURM array task, the job file's warning (``--signal=B:USR1@120``) stops the trials and requeues the task
    (``scontrol requeue <array>_<task>``); a plain ``scancel`` (SIGTERM) stops them the same way and requeues nothing
    (it used to requeue on every SIGTERM, undoing the cancel), nor does a runner that is not an array task. Either way
    the trial is interrupted, not failed."""
    path, out = _fake_sweep(tmp_path, sleep=30.0), tmp_path / "out"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.calls'}\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = {**clean_env(), "WANDB_MODE": "disabled", **slurm_env, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.Popen([sys.executable, "-m", "inception_lab", "sweep", str(path), "--out", str(out)], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while not list((out / "runs").glob("*/ran.jsonl")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    proc.send_signal(signum)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 143, log
    assert [t["status"] for t in _state(out)["trials"]][:1] == ["interrupted"]
    calls = (tmp_path / "scontrol.calls").read_text().split() if (tmp_path / "scontrol.calls").exists() else []
    assert calls == (["requeue", "88_1"] if requeued else []), log
    assert ("its trials resume when SLURM starts this task again" in log) == requeued, log


def test_a_filesystem_without_locks_is_one_line(tmp_path: Path, cli: Any, monkeypatch, capsys) -> None:
    """fcntl locks refused (ENOLCK: an NFS mount with no lock daemon, some FUSE mounts): a fit and a sweep end in one
    line naming the file, exit 2, not a traceback."""
    import errno
    import fcntl

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "lockf", no_locks)
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", "--config", str(REPO / "experiments/quickstart.yaml"), *SHORT, "--run_dir",
                        str(run_dir)])
    assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        f"inception_lab fit: error: --run_dir {run_dir}: No locks available: its filesystem offers no POSIX (fcntl) "
        "locks"), err
    path, out = _fake_sweep(tmp_path, sleep=0.0), tmp_path / "out"
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"inception_lab sweep: error: {out / 'state.json'}: No locks "), err


def test_a_deleted_state_json_is_repaired_from_its_copy(tmp_path: Path, capsys) -> None:
    """state.json deleted with runs/ (to start over) but state.json.prev left: one line, and --repair brings the copy
    back rather than saying there is nothing to repair."""
    path, out = _fake_sweep(tmp_path, sleep=0.0, run_cap=2), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    (out / "state.json").unlink()
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 2
    assert f"{out / 'state.json'}: missing" in capsys.readouterr().err
    assert lab_main(["sweep", str(path), "--out", str(out), "--repair"]) == 0
    assert f"repaired {out / 'state.json'} from its previous good copy" in capsys.readouterr().out
    assert [t["status"] for t in _state(out)["trials"]] == ["finished"] * 2


def test_a_broken_copy_of_the_sweep_file_is_one_line(tmp_path: Path, capsys) -> None:
    path, out = _fake_sweep(tmp_path, sleep=0.0, run_cap=1), tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    (out / "sweep.yaml").write_text("method: grid\nparameters: {a: [1\n")
    capsys.readouterr()
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"inception_lab sweep: error: {out / 'sweep.yaml'}: invalid YAML"), err

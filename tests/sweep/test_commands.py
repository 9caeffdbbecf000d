"""sweep/commands.py: a trial's command line, rendered as the W&B agent renders it, and every trial of every sweep
file parsed by the CLI with its values in place, whatever form the command gives the CLI; a program that is not the
CLI gets the agent's command line alone."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from inception_lab import cli
from inception_lab.__main__ import main as lab_main
from inception_lab.run.files import flatten
from inception_lab.run.identity import variant_name
from inception_lab.sweep import commands, spec
from tests.conftest import DIST_ENV, REPO, SHORT, fit_command, one_error_line, state_trials, write_sweep
from tests.sweep.conftest import SWEEP_FILES


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
        fixed = {arg[2:].split("=")[0] for arg in s.command if arg.startswith("--") and "=" in arg}  # the command's
        assert set(config.variant) <= {k for k in swept if k != "seed_everything"} | fixed, (path.name, config.variant)
        assert config.seed_everything == values.get("seed_everything", experiment.get("seed_everything"))


def test_none_and_strings_reach_the_cli_intact(tmp_path: Path, parsed: list[Any]) -> None:
    """What ``${args}`` would spoil (None as 'None'), through ``${args_json_file}``."""
    path = tmp_path / "values.yaml"
    write_sweep(path, {"model.lr_scheduler": {"value": None},
                       "model.net.init_args.reduce_width_mult": {"values": ["naive", 0.5]},
                       "model.net.init_args.filter_sizes": {"value": [3, [3, 3]]}}, fit_command())
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
    "module": ("${env}", "python", "-m", "inception_lab"),
    "console_script": ("${env}", "inception-lab"),  # pyproject's [project.scripts]
    "program": ("${env}", "${interpreter}", "${program}"),  # W&B's, with program: inception_lab/__main__.py
}


def _form_sweep(tmp_path: Path, form: str, parameters: dict[str, Any], *args: str) -> Path:
    program = {"program": "inception_lab/__main__.py"} if form == "program" else {}
    return write_sweep(tmp_path / "forms.yaml", parameters, fit_command(*args, cli=CLI_FORMS[form]), **program)


@pytest.mark.parametrize("form", CLI_FORMS)
def test_every_form_of_the_cli_is_checked_and_told_its_run(form: str, tmp_path: Path, cli: Any) -> None:
    """Whatever form the command gives the CLI, its trials are parsed by the CLI before anything runs (a dry run
    said "all valid" for ``aux_weight: abc`` in any form but ``-m inception_lab``) and told their run directory."""
    path = _form_sweep(tmp_path, form, {"model.aux_weight": {"values": [0.3, "abc"]}})
    code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out"), "--dry-run"], cwd=REPO)
    line = one_error_line(code, err, "sweep")
    assert line == err.strip() and "trial 001-aux_weight=abc" in line and "model.aux_weight" in line, err
    assert not (tmp_path / "out").exists()
    command = commands.trial_command(spec.load_sweep(path), tmp_path / "run", {"model.aux_weight": 0.3})
    assert commands.cli_args(command)[:3] == ["fit", "--config", "experiments/quickstart.yaml"]
    assert command[-4:] == ["--run_dir", str(tmp_path / "run"), "--wandb.group", "forms"]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["console_script", "program"])
def test_trials_run_whatever_form_gives_the_cli(form: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture) -> None:
    """A trial run by the console script or by W&B's ``${interpreter} ${program}`` runs as with ``-m inception_lab``
    (the runner in this process, the trial in its own): the runner lets its fit take the run directory (each one
    failed after 60 s, "a fit is running in it": the runner held the directory itself)."""
    path = _form_sweep(tmp_path, form, {"seed_everything": {"value": 0}}, *SHORT)
    out = tmp_path / "sweep"
    for name in DIST_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    monkeypatch.chdir(REPO)
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0, capsys.readouterr()
    [trial] = state_trials(out)
    run_dir = out / "runs" / trial["name"]
    assert (trial["name"], trial["status"], trial["starts"]) == ("000-seed0", "finished", 1)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished" and [a["status"] for a in summary["attempts"]] == ["finished"]
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_dir"] == str(run_dir)
    started = (run_dir / "trial.log").read_text().splitlines()[0]
    assert {"console_script": " inception-lab fit ", "program": " inception_lab/__main__.py fit "}[form] in started


def test_another_program_gets_the_agents_command_line_alone(tmp_path: Path) -> None:
    """A program that is not the CLI gets the command line the W&B agent gives it (here its default, ``${env}
    ${interpreter} ${program} ${args}``), nothing appended, and none of the runner's variables; it keeps no run
    record, so its exit code says whether it finished."""
    program = tmp_path / "train.py"
    program.write_text("import json, os, sys; print(json.dumps([sys.argv, 'INCEPTION_LAB_SWEEP_CLAIM' in os.environ]))")
    path = tmp_path / "other.yaml"
    write_sweep(path, {"lr": {"values": [0.1, 0.2]}}, program=str(program))  # no command: the agent's default
    out = tmp_path / "out"
    assert lab_main(["sweep", str(path), "--out", str(out)]) == 0
    trials = state_trials(out)
    assert [(t["name"], t["status"], t["starts"]) for t in trials] == [("000-lr=0.1", "finished", 1),
                                                                        ("001-lr=0.2", "finished", 1)]
    for t in trials:
        printed = (out / "runs" / t["name"] / "trial.log").read_text().splitlines()[-1]
        assert json.loads(printed) == [[str(program), f"--lr={t['values']['lr']}"], False]


def test_bad_trial_config_aborts_before_anything_runs(tmp_path: Path, cli: Any) -> None:
    path = tmp_path / "bad.yaml"
    write_sweep(path, {"model.net.init_args.head": {"values": ["gap", "gapp"]}, "seed_everything": {"values": [0]}},
                fit_command())
    for dry_run in (["--dry-run"], []):
        code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out"), *dry_run], cwd=REPO)
        line = one_error_line(code, err, "sweep")
        assert line == err.strip() and "trial 001-head=gapp-seed0" in line and "model.net.init_args.head" in line, err
    assert not (tmp_path / "out").exists()

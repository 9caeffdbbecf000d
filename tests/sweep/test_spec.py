"""sweep/spec.py: the repository's sweep files (W&B's schema, a full and a digits form of each ablation, the cells
they ask for), a sweep file's loading and its one-line errors, and the trials drawn: W&B's engine's, with or without
it installed."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml

from inception_lab.sweep import spec
from tests.conftest import REPO, one_error_line, validate_wandb_schema, write_sweep
from tests.sweep.conftest import SWEEP_FILES, fake_sweep

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
    # a grid ablation is judged by the held-out test/acc; bayes optimises on val, never on test
    metric = "test/acc" if config["method"] == "grid" else "val/acc_best"
    assert config["metric"] == {"name": metric, "goal": "maximize"}
    if config["method"] == "grid":  # each seed draws its own split (issue 35)
        assert "--data.init_args.split_seed=null" in config["command"]
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
        write_sweep(path, {"n": {"min": 1, "max": 3}, "q": {"distribution": "q_uniform", "min": 0.0, "max": 1.0,
                                                          "q": 0.25},
                           "c": {"value": [3, [3, 3]]}, "v": {"values": [1, 1.0, "x", {"a": 1}]}})
    s = spec.load_sweep(Path(path))
    theirs = spec.grid_values(s)
    _without_engine(monkeypatch)
    assert repr(spec.grid_values(s)) == repr(theirs)  # and of the same types: 1 == 1.0


def test_grid_values_of_two_types_keep_the_last_ones(tmp_path: Path, either: str) -> None:
    """The engine's yaml_hash makes 1.0 and 1 one value, in the first one's place, with the last one's type."""
    path = write_sweep(tmp_path / "g.yaml", {"a": {"values": [1.0, 1, 2, 2.0]}, "b": {"values": [True, 1]}})
    assert repr(spec.grid_values(spec.load_sweep(path))) == repr(
        [{"a": 1, "b": True}, {"a": 1, "b": 1}, {"a": 2.0, "b": True}, {"a": 2.0, "b": 1}])


def test_fallback_random_draws_are_the_engines(tmp_path: Path, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    distributions = {
        "uniform": {"min": 0.5, "max": 2.0}, "q_uniform": {"min": 0, "max": 10, "q": 2},
        "log_uniform_values": {"min": 1e-4, "max": 1e-1}, "q_log_uniform_values": {"min": 1.0, "max": 100.0, "q": 5},
        "int_uniform": {"min": -2, "max": 4}, "categorical": {"values": ["gap", "fc", [3, 3]]},
        "constant": {"value": {"a": 1}}}
    assert set(distributions) == set(spec.RANDOM_TYPES)
    path = tmp_path / "r.yaml"
    write_sweep(path, {k: {"distribution": k, **v} for k, v in distributions.items()}, method="random", run_cap=5)
    s = spec.load_sweep(path)
    theirs = spec.random_values(s, 300, seed=3)
    _without_engine(monkeypatch)
    ours = spec.random_values(s, 300, seed=3)
    assert [list(d) for d in ours] == [list(d) for d in theirs]
    for a, b in zip(ours, theirs):
        for key in a:
            close = a[key] == pytest.approx(b[key], rel=1e-12) if isinstance(b[key], float) else a[key] == b[key]
            assert close and type(a[key]) is type(b[key]), key  # pytest >= 9 refuses approx of a str
    write_sweep(path, {"x": {"distribution": "normal"}}, method="random", run_cap=5)
    with pytest.raises(spec.SweepError, match=r"x is normal: drawing it needs W&B's sweeps engine: pip install"):
        spec.random_values(spec.load_sweep(path), 1, seed=0)


def test_random_draws_are_seeded_and_in_range(tmp_path: Path, either: str) -> None:
    path = tmp_path / "r.yaml"
    write_sweep(path, {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                       "wd": {"distribution": "q_uniform", "min": 0, "max": 10, "q": 2},
                       "n": {"min": 1, "max": 3}, "head": {"values": ["gap", "fc"]}, "k": {"value": [3, [3, 3]]}},
                ["python", "train.py", "${args}"], method="random", run_cap=50)
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
    # what W&B's engine refuses (its schema, its search's and hyperband's own checks), with or without it installed
    "key_misspelled": ("method: grid\nparameters: {a: {vals: [1, 2]}}\n",
                       "parameters.a: has vals: expected values, value, min and max, or a distribution"),
    "key_unknown": ("method: grid\nparameters: {a: {values: [1, 2], default: 1}}\n",
                    "parameters.a: 'default' is not a key of a categorical parameter; allowed: values, distribution"),
    "top_key_unknown": ("method: grid\nparameters: {a: {values: [1]}}\nearly_terminat: {type: hyperband}\n",
                        "'early_terminat' is not a key of a W&B sweep file; allowed: apiVersion, kind, controller"),
    "int_uniform_floats": ("method: random\nrun_cap: 2\nparameters: {a: {distribution: int_uniform, min: 0.5, "
                           "max: 3}}\n", "parameters.a.min=0.5: expected an integer"),
    "bayes_no_metric": ("method: bayes\nrun_cap: 2\nparameters: {lr: {min: 0.1, max: 1.0}}\n",
                        "bayes search needs the metric it optimizes: metric: {name: val/acc_best, goal: maximize}"),
    "hyperband_no_min_iter": ("method: grid\nmetric: {name: loss}\nearly_terminate: {type: hyperband}\n"
                              "parameters: {a: {values: [1]}}\n", "early_terminate: hyperband needs min_iter"),
    "hyperband_eta": ("method: grid\nmetric: {name: loss}\nearly_terminate: {type: hyperband, min_iter: 1, eta: 1}\n"
                      "parameters: {a: {values: [1]}}\n", "early_terminate.eta=1: expected a number > 1"),
    "goal": ("method: grid\nmetric: {name: loss, goal: minimise}\nparameters: {a: {values: [1]}}\n",
             "metric.goal='minimise': expected one of minimize, maximize"),
    "run_cap": ("method: random\nrun_cap: 2.5\nparameters: {a: {min: 0.1, max: 1.0}}\n",
                "run_cap=2.5: expected an integer > 0"),
    "deprecated": ("method: random\nrun_cap: 2\nparameters: {a: {distribution: log_uniform, min: -3, max: 0}}\n",
                   "parameters.a: distribution log_uniform (min and max as base-e exponents) is refused by W&B: use "
                   "log_uniform_values"),
    "parameter_name": ("method: grid\nparameters: {trainer/max_epochs: {values: [1]}}\n",
                       "parameters.trainer/max_epochs: W&B's parameter names match [A-Za-z_][A-Za-z0-9_.-]*"),
    "probabilities": ("method: random\nrun_cap: 2\nparameters: {a: {values: [1, 2], probabilities: [0.5, 0.6]}}\n",
                      "parameters.a.probabilities: expected a number >= 0 per value, summing to 1"),
    "scheduler": ("method: grid\nscheduler: {engine: wandb}\nparameters: {a: {values: [1]}}\n",
                  "scheduler: for a custom scheduler (method: custom), which W&B's sweeps engine does not run"),
}


@pytest.mark.parametrize("case", BAD_SWEEPS)
def test_bad_sweep_is_one_line_error(case: str, tmp_path: Path, cli: Any, either: str) -> None:
    text, message = BAD_SWEEPS[case]
    path = tmp_path / "s.yaml"
    if text is ...:
        path.mkdir()
    elif text is not None:
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out")])
    line = one_error_line(code, err, "sweep")
    assert message in line and line == err.strip(), err  # the only line on stderr
    assert not (tmp_path / "out").exists()


def test_bayes_without_engine_says_how_to_install(tmp_path: Path, cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sweeps", None)  # as if the engine were not installed: import fails
    code, _, err = cli(["sweep", str(REPO / "sweeps" / "lr_wd_bayes.digits.yaml"), "--out", str(tmp_path / "o")])
    assert "pip install 'inception-lab[sweeps]'" in one_error_line(code, err, "sweep")


# W&B's engine's own test configs (wandb/sweeps' tests/), each with the engine's answer
ENGINE_CONFIGS = yaml.safe_load((Path(__file__).parent / "engine_configs.yaml").read_text())


def _engine_takes(sweeps: Any, config: dict[str, Any]) -> bool:
    """W&B's engine's answer: its schema (validate=True), then what its search and its hyperband check."""
    config = json.loads(json.dumps(config))
    try:
        with spec._seeded(0), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sweeps.next_run(config, [], validate=True)
            if "early_terminate" in config:
                sweeps.stop_runs(config, [], validate=True)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("case", ENGINE_CONFIGS, ids=[f"{i}-{c['test'].split('::')[1]}"
                                                      for i, c in enumerate(ENGINE_CONFIGS)])
def test_engine_test_configs_are_answered_as_the_engine_does(case: dict[str, Any], tmp_path: Path, cli: Any,
                                                             either: str) -> None:
    """Accepted or refused as the engine does (``ours`` says where, and why, this project refuses more), with the
    engine and without it; a refusal is one line at --dry-run."""
    if either == "engine":
        assert _engine_takes(spec.engine(), case["config"]) == (case["engine"] == "accept"), "the record is stale"
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(case["config"]))
    if case.get("ours", case["engine"]) == "accept":
        s = spec.load_sweep(path)  # and the trials it plans come out (the fallback's random draws: tested above)
        if s.method == "grid":
            assert spec.grid_values(s)
        elif either == "engine":
            assert spec.random_values(s, 2, seed=0) if s.method == "random" else spec.bayes_value(s, [], seed=0)
    else:
        with pytest.raises(spec.SweepError) as refused:  # the file itself, not a later check (--run-cap, ...)
            spec.load_sweep(path)
        code, _, err = cli(["sweep", str(path), "--out", str(tmp_path / "out"), "--run-cap", "2", "--dry-run"])
        assert one_error_line(code, err, "sweep") == f"inception_lab sweep: error: {refused.value}"
        assert str(refused.value).startswith(f"{path}: ") and not (tmp_path / "out").exists()


def test_real_sweep_with_a_bad_hyperband_block_starts_nothing(tmp_path: Path, cli: Any, either: str) -> None:
    path = fake_sweep(tmp_path, 0, early_terminate={"type": "hyperband", "eta": 2})  # no min_iter (nor max_iter, s)
    code, _, err = cli(["sweep", str(path), "--out", str(out := tmp_path / "out")])
    assert "early_terminate: hyperband needs min_iter" in one_error_line(code, err, "sweep")
    assert not out.exists()  # no state.json, no trial started


def test_fallback_rules_are_the_engines_schema(engine: Any) -> None:
    """The fallback's tables (spec.TOP_KEYS, ...) say what the engine's JSON schema says, key by key."""
    from sweeps.config.schema import dereferenced_sweep_config_jsonschema as schema
    from sweeps.config.schema import sweep_config_jsonschema as written
    from sweeps.params import PARAM_DEPRECATION_MAP

    def rule(prop: dict[str, Any]) -> Any:
        prop = prop.get("oneOf", [prop])[0]
        if "enum" in prop:
            return tuple(prop["enum"])
        bound = [f"{op}{prop[k]:g}" for k, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("minItems", ">="),
                                                   ("minProperties", ">=")) if k in prop]
        return prop.get("type", "any") + "".join(bound)

    definitions = schema["definitions"]
    assert {k: rule(v) for k, v in schema["properties"].items()} == spec.TOP_KEYS
    assert {k: rule(v) for k, v in definitions["metric"]["properties"].items()} == spec.METRIC_KEYS
    assert {k: rule(v) for k, v in definitions["hyperband_stopping"]["properties"].items()} == spec.HYPERBAND_KEYS
    assert definitions["parameters"]["propertyNames"]["pattern"].strip("^$") == spec.PARAMETER_NAME
    forms = [definitions[d["$ref"].split("/")[-1]] for d in written["definitions"]["parameter"]["anyOf"]]
    forms = [p for f in forms if "parameters" not in (p := f.get("anyOf", [f])[0]["properties"])]  # uniform: anyOf
    keys = {f["distribution"]["enum"][0]: {k: rule(v) for k, v in f.items() if k != "distribution"} for f in forms}
    deprecated = {definitions[d]["properties"]["distribution"]["enum"][0] for d in PARAM_DEPRECATION_MAP}
    assert deprecated == set(spec.DEPRECATED)
    assert {k: v for k, v in keys.items() if k not in deprecated} == spec.PARAMETER_KEYS
    assert {k for f in forms for k, v in f.items() if "default" in v} - {"distribution"} == set(spec.DEFAULTED)


def test_a_sweep_without_a_metric_reads_its_accuracy_as_higher_is_better(tmp_path: Path) -> None:
    """No ``metric``: the runner's table reads val/acc_best, an accuracy (it said "minimize"); a metric named without
    a goal is W&B's: minimize."""
    (tmp_path / "a.yaml").write_text("method: grid\nparameters: {a: {values: [1]}}\n")
    (tmp_path / "b.yaml").write_text("method: grid\nmetric: {name: val/loss}\nparameters: {a: {values: [1]}}\n")
    assert [(s.metric, s.goal) for s in map(spec.load_sweep, (tmp_path / "a.yaml", tmp_path / "b.yaml"))] == [
        ("val/acc_best", "maximize"), ("val/loss", "minimize")]

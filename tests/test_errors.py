"""One convention for every command: a user error is one line, ``inception_lab <command>: error: <line>``, exit 2,
no traceback, nothing written; and a constructor refuses what the command line refuses (its type hints, checked once).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser as JsonArgumentParser
from jsonargparse.typing import PositiveInt

from inception_lab.__main__ import COMMANDS, LIGHTNING
from inception_lab.arguments import UnitInterval, refusal
from inception_lab.cli import UserError, parse
from inception_lab.data import CIFARDataModule, DigitsDataModule, ImageNetDataModule
from inception_lab.errors import ArgumentValueError, user_message
from inception_lab.models import Inception
from inception_lab.module import InceptionClassifier
from inception_lab.schedules import WarmupCosineLR
from tests.conftest import QUICKSTART, REPO, one_error_line, short


# ---- every file a command reads ------------------------------------------------------------------------------------
def _checkpoint(path: Path) -> None:
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 0}, path)


BAD_FILES = {  # kind: how it is made (None: not made at all)
    "missing": None,
    "directory": lambda p: p.mkdir(),
    "binary": lambda p: p.write_bytes(b"\x80\x02}q\x00(X\x04\x00\x00\x00seedq\x00\xff\xfe"),
    "not-utf8": lambda p: p.write_bytes("name: caf\xe9\n".encode("latin-1")),
    "not-yaml": lambda p: p.write_text("trainer:\n  max_epochs: [1\n"),
    "wrong-shape": lambda p: p.write_text("- trainer\n- model\n"),
    "checkpoint": _checkpoint,
}
CONFIG_SAYS = {"missing": "no such file", "directory": "a directory, not a config file", "binary": "not UTF-8 text",
               "not-utf8": "not UTF-8 text", "not-yaml": "not valid YAML at line 3",
               "wrong-shape": "YAML holding a list",
               "checkpoint": "not UTF-8 text (a binary file, such as a checkpoint? give that as --ckpt_path)"}
SWEEP_SAYS = {"missing": "no such sweep file", "directory": "a directory, not a sweep file", "binary": "not UTF-8",
              "not-utf8": "not UTF-8", "not-yaml": "invalid YAML (line 3)", "wrong-shape": "a sweep file is a mapping",
              "checkpoint": "not UTF-8"}
CHECKPOINT_SAYS = {"missing": "no such file", "directory": "a directory, not a checkpoint",
                   "binary": "not a checkpoint (not a torch.save archive", "not-utf8": "not a checkpoint (",
                   "not-yaml": "not a checkpoint (a text file", "wrong-shape": "not a checkpoint (a text file"}
READERS = {  # command: (its command line reading FILE, what it says of each kind)
    "fit": (["fit", "--config", "FILE", "--run_dir", "RUN"], CONFIG_SAYS),
    "summary": (["summary", "--config", "FILE"], CONFIG_SAYS),
    "bench": (["bench", "--config", "FILE"], CONFIG_SAYS),
    "slurm": (["slurm", "fit", "--dry-run", "--config", "FILE", "--run_dir", "RUN"], CONFIG_SAYS),
    "sweep": (["sweep", "FILE", "--out", "RUN"], SWEEP_SAYS),
    "test": (["test", "--ckpt_path", "FILE", "--run_dir", "RUN"], CHECKPOINT_SAYS),
    "validate": (["validate", "--config", str(QUICKSTART), "--ckpt_path", "FILE", "--run_dir", "RUN"],
                 CHECKPOINT_SAYS),
}
CASES = [(command, kind) for command, (_, says) in READERS.items() for kind in BAD_FILES if kind in says]


@pytest.mark.parametrize(("command", "kind"), CASES, ids=[f"{c}-{k}" for c, k in CASES])
def test_a_bad_file_is_one_line_naming_it(command: str, kind: str, tmp_path: Path, cli) -> None:
    """Every command that reads a file, and every way a file can be wrong: one line naming the file and what is
    wrong with it, and nothing written."""
    path = tmp_path / ("given.ckpt" if command in ("test", "validate") else "given.yaml")
    if BAD_FILES[kind] is not None:
        BAD_FILES[kind](path)
    args, says = READERS[command]
    args = [str(path) if a == "FILE" else str(tmp_path / "run") if a == "RUN" else a for a in args]
    code, _, err = cli(args)
    line = one_error_line(code, err, command)
    assert str(path) in line and says[kind] in line, line
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("kind", [k for k in BAD_FILES if k != "missing"])
def test_a_bad_copy_in_a_sweep_directory_is_one_line(kind: str, tmp_path: Path, cli) -> None:
    """A sweep directory's own copy of its sweep file (``<out>/sweep.yaml``), broken: one line naming it."""
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({"name": "s", "method": "grid", "parameters": {"a": {"values": [1]}},
                                     "command": ["python", "-c", "print(1)", "${args}"]}))
    out = tmp_path / "out"
    out.mkdir()
    BAD_FILES[kind](out / "sweep.yaml")
    code, _, err = cli(["sweep", str(sweep), "--out", str(out)])
    line = one_error_line(code, err, "sweep")
    assert str(out / "sweep.yaml") in line, line
    assert [p.name for p in out.iterdir()] == ["sweep.yaml"]  # nothing run, nothing written


@pytest.mark.parametrize(("command", "kind"), [(c, k) for c in ("ensemble", "compare") for k in ("missing", "file")])
def test_a_run_directory_that_is_not_one_is_one_line(command: str, kind: str, tmp_path: Path, cli) -> None:
    path = tmp_path / "run"
    if kind == "file":
        path.write_text("not a directory\n")
    code, _, err = cli([command, str(path), "--out", str(tmp_path / "report")])
    line = one_error_line(code, err, command)
    assert str(path) in line and ("no such" if kind == "missing" else "not a directory" if command == "compare"
                                  else "a file, not a run directory") in line, line
    assert not (tmp_path / "report").exists()


# ---- the command lines themselves --------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [*LIGHTNING, *COMMANDS])
def test_an_unknown_option_is_one_line_for_every_command(command: str, tmp_path: Path, cli) -> None:
    """argparse's usage-and-error (two lines and more) is one line under the convention, for every command."""
    args = {"slurm": ["slurm", "fit"], "sweep": ["sweep", "x.yaml"], "ensemble": ["ensemble", "run"],
            "compare": ["compare", "run"], "bench": ["bench", "--preset", "cifar"]}.get(command, [command])
    code, _, err = cli([*args, "--no-such-option", "3"])
    line = one_error_line(code, err, command)
    assert "--no-such-option" in line, line
    assert not list(tmp_path.iterdir())


def test_a_command_line_with_no_command_is_one_line(cli) -> None:
    code, _, err = cli([])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("inception_lab: error: ") and "fit" in lines[0]


# ---- the constructors refuse what the CLI refuses ------------------------------------------------------------------
CANDIDATES: list[Any] = [-1, 0, 0.5, 1, 1.0, 1.5, 3, 1e-3, float("nan"), True, False, None, "bogus", "naive",
                         [3, 5], [3, [3, 3]], [3], [], ["4a"], ["4a", "9z"], {"a": 1}]
CLASSES = [Inception, InceptionClassifier, DigitsDataModule, CIFARDataModule, ImageNetDataModule, WarmupCosineLR]
NOT_FROM_TEXT = {"net", "optimizer", "lr_scheduler"}  # objects and callables: no command-line text of their own


def _text(value: Any) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    return value if isinstance(value, str) else json.dumps(value)  # JSON is YAML: what a config or a command line holds


RULES = {  # (class, argument): what its constructor checks beyond the type, where one value alone cannot say
    ("Inception", "filter_sizes"): ("kernel sizes must be odd",),
    ("Inception", "aux_positions"): ("is not an inception block",),
    ("Inception", "image_size"): ("a smaller input leaves no pixel",),
    ("DigitsDataModule", "num_workers"): ("a resident dataset",),
    ("CIFARDataModule", "num_workers"): ("a resident dataset",),
    ("DigitsDataModule", "val_size"): ("leaves no training images",),
    ("DigitsDataModule", "test_size"): ("leaves no training images",),
    ("CIFARDataModule", "val_size"): ("leaves no training images",),
    ("ImageNetDataModule", "backend"): ("NVIDIA DALI is not installed",),
}


def _build(cls: type, name: str, value: Any) -> Any:
    """``cls`` with ``name=value``; networks an eighth of GoogLeNet's width (the same checks, a fraction of the
    build time)."""
    if cls is Inception:
        return cls(**{"width_mult": 0.125, name: value})
    if cls is InceptionClassifier:
        return cls(Inception(num_classes=10, aux_positions=(), width_mult=0.125), **{name: value})
    if cls is WarmupCosineLR:
        return cls(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 10, **{name: value})
    return cls(**{name: value})


def _typed_arguments() -> list[tuple[type, str]]:
    return [(cls, name) for cls in CLASSES for name, p in inspect.signature(cls.__init__).parameters.items()
            if name not in ("self", "optimizer", *NOT_FROM_TEXT) and p.annotation is not inspect.Parameter.empty
            and name != "total_steps"]


@pytest.mark.parametrize(("cls", "name"), _typed_arguments(), ids=[f"{c.__name__}.{n}" for c, n in _typed_arguments()])
def test_a_constructor_refuses_what_the_command_line_refuses(cls: type, name: str) -> None:
    """For every typed argument: jsonargparse (the CLI, from the signature) and the constructor's own check (the
    same type hints) agree on each candidate value; where the CLI turns the text into another value, the
    constructor takes that value."""
    from typing import get_type_hints

    hint = get_type_hints(cls.__init__)[name]
    parser = JsonArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls, "x", skip={"net", "optimizer", "lr_scheduler", "total_steps"}, sub_configs=True)
    default = inspect.signature(cls.__init__).parameters[name].default
    for value in [*CANDIDATES, default]:
        try:
            parsed = parser.parse_args([f"--x.{name}={_text(value)}"]).x[name]
        except Exception:  # noqa: BLE001 (jsonargparse's refusal)
            parsed = refused = None
            refused = True
        else:
            refused = False
        said = refusal(value, hint)
        if said is not None:  # and the constructor itself refuses it, naming the argument
            with pytest.raises(ArgumentValueError) as error:
                _build(cls, name, value)
            assert name in error.value.arguments and str(error.value).endswith(said), str(error.value)
        if refused:
            assert said is not None, f"{cls.__name__}({name}={value!r}): the CLI refuses it, the constructor takes it"
            continue
        same = parsed == value or (isinstance(value, float) and math.isnan(value) and isinstance(parsed, float)
                                   and math.isnan(parsed))
        if isinstance(value, (list, tuple)) and isinstance(parsed, (list, tuple)):
            same = json.dumps(list(parsed)) == json.dumps(list(value))
        if same and type(parsed) is type(value) or same and isinstance(parsed, float) and isinstance(value, int):
            assert said is None, f"{cls.__name__}({name}={value!r}): the CLI takes it, the constructor says {said}"
        else:  # the CLI made another value of the text: the constructor takes that one
            assert refusal(parsed, hint) is None, f"{cls.__name__}({name}={parsed!r}): {refusal(parsed, hint)}"
        try:  # and builds with it, unless a rule beyond the type (another argument, what is installed) says no
            _build(cls, name, parsed)
        except ArgumentValueError as error:  # (one naming another argument: that one's rule, as stages=() and 4a)
            rules = RULES.get((cls.__name__, name), ()) if name in error.arguments else ("",)
            assert any(rule in error.reason for rule in rules), f"{cls.__name__}({name}={parsed!r}): {error}"


@pytest.mark.parametrize(("build", "prefix", "message"), [
    (lambda: Inception(dropout=1.0), "model.net.init_args.", "dropout=1.0: must be in [0, 1)"),
    (lambda: InceptionClassifier(Inception(num_classes=10), label_smoothing=1.5), "model.",
     "label_smoothing=1.5: must be in [0, 1)"),
    (lambda: DigitsDataModule(batch_size=0), "data.init_args.", "batch_size=0: must be > 0"),
    (lambda: CIFARDataModule(dataset="cifar1000"), "data.init_args.",
     "dataset='cifar1000': allowed values are 'cifar10', 'cifar100'"),
    (lambda: WarmupCosineLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), 10, warmup_fraction=1.0),
     "model.lr_scheduler.init_args.", "warmup_fraction=1.0: must be in [0, 1)"),
])
def test_a_constructor_says_name_value_reason_and_the_cli_adds_the_key(build, prefix: str, message: str) -> None:
    """Python callers read ``name=value: reason``; the CLI's one place (``errors.CONFIG_KEYS``) puts the key in
    front."""
    with pytest.raises(ArgumentValueError) as error:
        build()
    assert str(error.value) == message
    assert user_message(error.value) == prefix + message


def test_numpy_scalars_are_numbers_as_python_s_are() -> None:
    """A sweep grid built with numpy hands the constructors np.float32 / np.int64: taken where the Python number
    would be, refused with the same reason where it would not."""
    import numpy as np

    assert refusal(np.float32(0.5), UnitInterval) is None and refusal(np.int64(10), PositiveInt) is None
    assert refusal(np.float64(1.5), UnitInterval) == "must be in [0, 1)"
    assert refusal(np.float32(0.5), PositiveInt) == "expected an integer > 0"  # an int is wanted: 0.5 is not one
    assert refusal(np.bool_(True), UnitInterval) == "expected a number in [0, 1)"
    net = Inception(num_classes=np.int64(10), dropout=np.float32(0.5), width_mult=np.float64(0.125), aux_positions=())
    assert net.fc.out_features == 10
    with pytest.raises(ArgumentValueError, match=r"^dropout=np.float32\(1.5\): must be in \[0, 1\)$"):
        Inception(dropout=np.float32(1.5))


@pytest.mark.slow  # real processes, each importing torch and Lightning
def test_the_convention_holds_in_a_real_process(tmp_path: Path, run_cli) -> None:
    """What a shell sees from ``python -m inception_lab``: exit 2 and the one line on stderr, nothing on stdout."""
    proc = run_cli("sweep", str(tmp_path / "none.yaml"), cwd=tmp_path, timeout=600, check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"inception_lab sweep: error: {tmp_path / 'none.yaml'}: no such sweep file\n"
    # a fit refused after its config is parsed and its seed set (no "Seed set to 0" first), or by Lightning's Trainer
    # (no device lines first): the one line alone
    for value, line in (("accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0: must be >= 1 (batches per "
                                                      "optimizer step)"),
                        ("limit_val_batches=-1", "You have passed invalid value -1.0 for trainer.limit_val_batches, it "
                                                 "has to be in [0.0, 1.0] or an int.")):
        proc = run_cli("fit", "--config", str(QUICKSTART), f"--trainer.{value}", "--run_dir", str(tmp_path / "run"),
                       cwd=tmp_path, timeout=300, check=False)
        assert (proc.returncode, proc.stdout, proc.stderr) == (2, "", f"inception_lab fit: error: {line}\n")
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("override", "build"), [
    ("model.net.init_args.dropout=1.5", lambda: Inception(dropout=1.5)),
    ("model.net.init_args.width_mult=0", lambda: Inception(width_mult=0)),
    ("model.net.init_args.filter_sizes=[3, 4]", lambda: Inception(filter_sizes=[3, 4])),
    ("model.label_smoothing=1.5", lambda: InceptionClassifier(Inception(num_classes=10), label_smoothing=1.5)),
    ("model.aux_weight=-0.5", lambda: InceptionClassifier(Inception(num_classes=10), aux_weight=-0.5)),
    ("data.init_args.batch_size=0", lambda: DigitsDataModule(batch_size=0)),
    ("data.init_args.val_size=1700", lambda: DigitsDataModule(val_size=1700)),
])
def test_the_command_line_and_the_constructor_say_the_same(override: str, build) -> None:
    """jsonargparse's refusal (from the type) and the constructor's (the same type, or its own rule) read alike:
    ``key=value: reason``, the key in full on the command line."""
    key, value = override.split("=", 1)
    with pytest.raises(UserError) as cli_error:
        parse(["fit", "--config", str(QUICKSTART), f"--{key}={value}"])
    with pytest.raises(ArgumentValueError) as python_error:
        build()
    assert str(cli_error.value) == user_message(python_error.value)  # the constructor's line, its keys in full
    assert override.replace(" ", "") in str(cli_error.value).replace(" ", "")
    assert not str(python_error.value).startswith(("model.", "data."))


# ---- a fit's bad input: the config, its values, its files, its data --------------------------------------------
def test_a_fit_trains(tmp_path: Path, cli) -> None:
    code, _, err = cli(["fit", "--config", str(QUICKSTART), "--trainer.max_epochs=0", "--run_dir", str(tmp_path / "r")])
    assert one_error_line(code, err, "fit").startswith("inception_lab fit: error: trainer.max_epochs=0: ")
    assert not (tmp_path / "r").exists()


def _bad_yaml(tmp_path: Path) -> tuple[list[str], str]:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  aux_weight: [0.3\n")
    return ["--config", str(QUICKSTART), "--config", str(bad)], f"--config {bad}: not valid YAML at line 3"


def _not_a_checkpoint(tmp_path: Path) -> tuple[list[str], str]:
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint\n")
    return ["--config", str(QUICKSTART), "--ckpt_path", str(text)], f"--ckpt_path {text}: not a checkpoint (a text file"


def _truncated_checkpoint(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "cut.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 0}, path)
    path.write_bytes(path.read_bytes()[:-200])
    return ["--config", str(QUICKSTART), "--ckpt_path", str(path)], (
        f"--ckpt_path {path}: not a checkpoint (a torch.save archive cut short")


def _duplicate_key(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "twice.yaml"
    path.write_text("model:\n  aux_weight: 0.3\n  label_smoothing: 0.1\n  aux_weight: 1.0\n")
    return ["--config", str(QUICKSTART), "--config", str(path)], (
        f"--config {path}: not valid YAML at line 4, column 3: duplicate key 'aux_weight'")


def _checkpoint_as_config(tmp_path: Path) -> tuple[list[str], str]:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(10)}, "epoch": 0}, path)
    return ["--config", str(path)], f"--config {path}: not a YAML config: not UTF-8 text"


def _directory_as_config(tmp_path: Path) -> tuple[list[str], str]:
    return ["--config", str(tmp_path)], f"--config {tmp_path}: a directory, not a config file"


def _gpu(tmp_path: Path) -> tuple[list[str], str]:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return ["--config", str(QUICKSTART), "--trainer.accelerator=gpu"], "No supported gpu backend found"


BAD = {
    "unknown key": (["--config", str(QUICKSTART), "--model.aux_wieght=0.1"],
                    "--model.aux_wieght=0.1 (did you mean --model.aux_weight?)"),
    "unknown network argument": (["--config", str(QUICKSTART), "--model.net.init_args.heda=fc"],
                                 "model.net: Option 'heda' is not accepted (did you mean head?)"),
    "unknown data argument": (["--config", str(QUICKSTART), "--data.init_args.batch_sise=8"],
                              "data: Option 'batch_sise' is not accepted (did you mean batch_size?)"),
    "not a number": (["--config", str(QUICKSTART), "--model.aux_weight=abc"], "model.aux_weight"),
    "negative weight": (["--config", str(QUICKSTART), "--model.aux_weight=-0.5"], "model.aux_weight"),
    "smoothing of 1.5": (["--config", str(QUICKSTART), "--model.label_smoothing=1.5"], "model.label_smoothing"),
    "dropout of 1": (["--config", str(QUICKSTART), "--model.net.init_args.dropout=1"], "model.net.init_args.dropout"),
    "too many held out": (["--config", str(QUICKSTART), "--data.init_args.val_size=1500"],
                          "data.init_args.test_size=300, data.init_args.val_size=1500: leaves no training images"),
    "unknown head": (["--config", str(QUICKSTART), "--model.net.init_args.head=mlp"], "model.net.init_args.head"),
    "width": (["--config", str(QUICKSTART), "--model.net.init_args.width_mult=0"], "model.net.init_args.width_mult"),
    "even kernel": (["--config", str(QUICKSTART), "--model.net.init_args.filter_sizes=[3, 4]"],
                    "model.net.init_args.filter_sizes=[3, 4]: kernel sizes must be odd"),
    "epochs": (["--config", str(QUICKSTART), "--trainer.max_epochs=many"], "trainer.max_epochs"),
    "interval": (["--config", str(QUICKSTART), "--model.lr_interval=epoch"],
                 "model.lr_interval='epoch': does not fit lr_scheduler"),
    "resume of no run": (["--config", str(QUICKSTART), "--ckpt_path", "last"], "--ckpt_path last: "),
    "empty checkpoint path": (["--config", str(QUICKSTART), "--ckpt_path", ""], "--ckpt_path '': empty; "),
    "no accumulation": (["--config", str(QUICKSTART), "--trainer.accumulate_grad_batches=0"],
                        "trainer.accumulate_grad_batches=0: must be >= 1"),
    "negative steps": (["--config", str(QUICKSTART), "--trainer.max_steps=-5"],
                       "`trainer.max_steps` must be a non-negative integer or -1"),  # Lightning's, keyed
    "validation every 0 epochs": (["--config", str(QUICKSTART), "--trainer.check_val_every_n_epoch=0"],
                                  "trainer.check_val_every_n_epoch=0: must be >= 1"),  # was a ZeroDivisionError
    "validation every 0 batches": (["--config", str(QUICKSTART), "--trainer.val_check_interval=0"],
                                   "trainer.val_check_interval=0: must be > 0"),
    "negative clipping": (["--config", str(QUICKSTART), "--trainer.gradient_clip_val=-1"],
                          "trainer.gradient_clip_val=-1.0: must be >= 0"),  # it reversed the gradients
    "no training batch": (["--config", str(QUICKSTART), "--trainer.limit_train_batches=0"],
                          "trainer.limit_train_batches=0: a fit trains at least one batch"),
    "step schedule, no end": (["--config", str(QUICKSTART), "--trainer.max_epochs=-1"],
                              "trainer.max_epochs=-1: a run that trains until stopped has no length for "
                              "model.lr_scheduler"),
    "step schedule, a time limit": (["--config", str(QUICKSTART), "--trainer.max_epochs=null",
                                     "--trainer.max_time=00:00:10:00"],
                                    "trainer.max_time=00:00:10:00: a run that trains until stopped"),
    "seed out of numpy's range": (["--config", str(QUICKSTART), "--seed_everything=99999999999"],
                                  "seed_everything=99999999999: must be in [0, 4294967295]"),
    "negative seed": (["--config", str(QUICKSTART), "--seed_everything=-1"], "seed_everything=-1: must be in "),
    "negative lr": (["--config", str(QUICKSTART), "--model.optimizer.init_args.lr=-1"],
                    "model.optimizer.init_args.lr=-1.0: Invalid learning rate: -1"),
    "nan lr": (["--config", str(QUICKSTART), "--model.optimizer.init_args.lr", "nan"],
               "model.optimizer.init_args.lr: expected float | Tensor; got 'nan'"),
    "invalid yaml": _bad_yaml,
    "text file as checkpoint": _not_a_checkpoint,
    "truncated checkpoint": _truncated_checkpoint,
    "checkpoint as config": _checkpoint_as_config,
    "duplicate key": _duplicate_key,
    "directory as config": _directory_as_config,
    "no gpu": _gpu,
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line_error(tmp_path: Path, case: str, cli) -> None:
    args, message = BAD[case](tmp_path) if callable(BAD[case]) else BAD[case]
    run_dir = tmp_path / "run"
    at = max((i + 2 for i, arg in enumerate(args) if arg == "--config"), default=0)  # the case's values over short's
    code, _, err = cli(["fit", *args[:at], *short(batches=1, val_batches=1, wandb=False), *args[at:], "--run_dir",
                        str(run_dir)])
    assert message in one_error_line(code, err, "fit"), err[-2000:]
    assert not run_dir.exists()  # refused before anything is written: the corrected command with the same --run_dir


def test_parse_reports_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=r"^model.net.init_args.head: "):
        parse(["fit", "--config", str(QUICKSTART), "--model.net.init_args.head=mlp"])
    with pytest.raises(UserError, match=r"^seed_everything=-3: must be in \[0, 4294967295\]"):
        parse(["fit", "--config", str(QUICKSTART), "--seed_everything=-3"])
    # parsing runs nothing: the samplers' seed (PL_GLOBAL_SEED) stays as it was (a sweep runner parses every trial)
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    parse(["fit", "--config", str(QUICKSTART), "--seed_everything=3"])
    assert "PL_GLOBAL_SEED" not in os.environ


@pytest.mark.parametrize("case", ["missing_cifar", "missing_imagenet", "corrupt_cifar"])
def test_bad_data_is_one_line_error(tmp_path: Path, tiny_cifar: Path, case: str, cli) -> None:
    if case == "missing_cifar":
        args = ["--config", str(REPO / "experiments/googlenet_cifar10.yaml"),
                f"--data.init_args.root={tmp_path / 'nowhere'}"]
        expect = str(tmp_path / "nowhere")
    elif case == "missing_imagenet":
        args = ["--config", str(REPO / "experiments/googlenet_imagenet.yaml"),
                f"--data.init_args.root={tmp_path / 'nowhere'}", "--data.init_args.num_workers=0"]
        expect = str(tmp_path / "nowhere")
    else:
        batch = tiny_cifar / "cifar-10-batches-py" / "data_batch_1"
        batch.write_bytes(batch.read_bytes()[:100])
        args = ["--config", str(REPO / "experiments/googlenet_cifar10.yaml"), f"--data.init_args.root={tiny_cifar}"]
        expect = "data_batch_1"
    run_dir = tmp_path / "run"
    code, _, err = cli(["fit", *args, "--trainer.accelerator=cpu", "--trainer.precision=32-true",
                        "--wandb.enabled=false", "--run_dir", str(run_dir)])
    assert expect in one_error_line(code, err, "fit"), err[-2000:]
    assert not run_dir.exists()  # refused before the run is written: the data's source is checked first


@pytest.mark.parametrize("arg, message", [
    ("--data.init_args.num_workers=2", "data.init_args.num_workers=2: a resident dataset is gathered on the device"),
    ("--data.init_args.batch_size=0", "data.init_args.batch_size=0: must be > 0"),
    ("--data.init_args.val_size=1797", "data.init_args.test_size=300, data.init_args.val_size=1797: leaves no "),
])
def test_data_constructor_errors_are_one_line(arg: str, message: str, tmp_path: Path, cli) -> None:
    """A DataModule's own check reaches the user as its one line (not jsonargparse's Union wrapping)."""
    code, _, err = cli(["fit", "--config", str(QUICKSTART), arg])
    assert one_error_line(code, err, "fit").startswith(f"inception_lab fit: error: {message}")
    assert not (tmp_path / "runs").exists()


# ---- input sizes the network cannot take: refused by the network before it builds anything -----------------------
@pytest.mark.parametrize("command, args, key", [
    ("fit", ["--model.net.init_args.stem", "imagenet", "--data.init_args.image_size", "16"],
     "data.init_args.image_size=16"),
    ("fit", ["--data.init_args.image_size", "100000"], "data.init_args.image_size=100000"),
    ("summary", ["--preset", "paper", "--image-size", "100000"], "--image-size 100000"),
], ids=["fit-16-imagenet-stem", "fit-100000", "summary-100000"])
def test_an_input_size_the_network_cannot_take_is_one_line(command: str, args: list[str], key: str, tmp_path: Path,
                                                           cli) -> None:
    run_dir = tmp_path / "run"
    fit = ["--config", str(QUICKSTART), *short(batches=1, val_batches=1, wandb=False), "--run_dir", str(run_dir)]
    code, _, err = cli([command, *(fit if command == "fit" else []), *args])
    assert one_error_line(code, err, command).startswith(f"inception_lab {command}: error: {key}: must be in [")
    assert not run_dir.exists() and not (tmp_path / "runs").exists()

"""Errors the user caused: one convention for every command.

Each command's errors subclass :class:`UserError`; ``python -m inception_lab`` prints one as one line,
``inception_lab <command>: error: <line>``, and exits 2, without a traceback (``__main__``). Argparse's usage errors
are one such line too (:class:`ArgumentParser`). A constructor refuses an argument with
:class:`ArgumentValueError`, ``name=value: reason``, and this module alone knows where each constructor's arguments
sit in a config (``CONFIG_KEYS``), so the CLI names the full key (``model.net.init_args.dropout=1.5: ...``).

Torch-free: the sweep runner imports it.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from typing import Any, NoReturn

# Where a constructor's arguments sit in a config, by the class that declares them (a subclass finds its base here).
CONFIG_KEYS = {
    "inception_lab.models.inception.Inception": "model.net.init_args.",
    "inception_lab.module.InceptionClassifier": "model.",
    "inception_lab.data.base.ImageDataModule": "data.init_args.",
    "inception_lab.schedules.WarmupCosineLR": "model.lr_scheduler.init_args.",
}
LINKED = ("num_classes", "in_channels", "image_size")  # the network's, given as the DataModule's (data.init_args.*)


class UserError(Exception):
    """A mistake in the user's input: reported as one line naming the file or key and what is allowed."""


class ArgumentValueError(UserError, ValueError):
    """A constructor's argument refused: ``name=value: reason`` (a value of ``...``: the name alone). ``owner`` is the
    class (or function) whose argument it is; :func:`user_message` puts the argument's config key in front."""

    def __init__(self, owner: Any, reason: str, **arguments: Any) -> None:
        self.owner, self.reason, self.arguments = owner, reason, arguments
        super().__init__(self.describe())

    def describe(self, prefix: str = "") -> str:
        keys = {name: f"{'data.init_args.' if prefix == 'model.net.init_args.' and name in LINKED else prefix}{name}"
                for name in self.arguments}  # a linked argument by the key the user gives it
        named = ", ".join(keys[name] if value is ... else f"{keys[name]}={value!r}"
                          for name, value in self.arguments.items())
        return f"{named}: {self.reason}" if named else self.reason


def config_prefix(owner: Any) -> str:
    """The config key in front of ``owner``'s arguments (``""``: not a class the CLI builds)."""
    for cls in getattr(owner, "__mro__", (owner,)):
        key = CONFIG_KEYS.get(f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', '')}")
        if key is not None:
            return key
    return ""


class ArgumentParser(argparse.ArgumentParser):
    """argparse under the convention: a bad command line raises :class:`UserError` (one line, exit 2), instead of
    printing the usage and exiting from inside the parser."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (options: {self.prog} --help)")


def _one_line(error: BaseException) -> str:
    """jsonargparse explains a bad key as nested 'Parser key "a":' / 'Problem with given class_path' lines: fold
    them into one line naming the full key (``data.init_args.batch_size``) and the innermost key's reason."""
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    if not lines:
        return type(error).__name__
    keys: list[str] = []
    reason: str | None = None
    for line in lines:
        key = re.fullmatch(r'Parser key "([^"]+)":?(.*)', line)
        nested = re.fullmatch(r'.*expects a function or a callable class: Parser key "([^"]+)":?(.*)', line)
        if key:  # a deeper key: the reason is its own
            keys.append(key.group(1))
            reason = key.group(2).strip() or None
        elif nested:  # an argument of a class given as a callable (model.optimizer: lr)
            keys += ["init_args", nested.group(1)]
            reason = nested.group(2).strip() or None
        elif line.lstrip("- ").startswith("Problem with given class_path"):
            keys.append("init_args")
        elif reason is None and not line.startswith(("Given value", "Subclass types expect", "- ", "Does not validate",
                                                     "Subtypes: ", "Errors:")):
            reason = line
    if keys and keys[-1] == "init_args":
        keys.pop()
    subtypes = next((ln for ln in lines if ln.startswith("Subtypes: ")), None)
    given = next((ln for ln in lines if ln.startswith("Given value: ")), None)
    if reason is None and subtypes and given:  # a Union: name the allowed types once instead of one line per type
        names = re.findall(r"<class '(?:\w+\.)*(\w+)'>|(typing\.Literal\[[^\]]*\])", subtypes)
        allowed = " | ".join((a or b).replace("NoneType", "None") for a, b in names)
        value = given.removeprefix("Given value: ").split(". Got value: ")[0]
        reason = f"expected {allowed}; got {value!r}"
    reason = reason or lines[-1].lstrip("- ")
    restricted = re.fullmatch(r"Not of type \w+: (.+) does not conform to restriction (.+)", reason)
    if keys and restricted:  # PositiveInt, UnitInterval, ...: as the constructor says it (name=value: must be ...)
        return f"{'.'.join(keys)}={restricted.group(1)}: must be {_restriction(restricted.group(2))}"
    return f"{'.'.join(keys)}: {reason}" if keys else reason


def _restriction(rule: str) -> str:
    """jsonargparse's ``v>=0 and v<1`` as ``in [0, 1)``; ``v>0`` as ``> 0``."""
    parts = [re.fullmatch(r"v\s*([<>]=?)\s*(\S+)", p.strip()) for p in rule.split(" and ")]
    return bounds_text({m.group(1): m.group(2) for m in parts if m}) if all(parts) else f"such that {rule}"


def bounds_text(bounds: dict[str, Any]) -> str:
    """``{">=": 0, "<": 1}`` as ``in [0, 1)``; ``{">": 0}`` as ``> 0``; ``{}`` as ``""``."""
    low = next(((op, bounds[op]) for op in (">=", ">") if op in bounds), None)
    high = next(((op, bounds[op]) for op in ("<=", "<") if op in bounds), None)
    if low and high:
        return f"in {'[' if low[0] == '>=' else '('}{low[1]}, {high[1]}{']' if high[0] == '<=' else ')'}"
    return " and ".join(f"{op} {bound}" for op, bound in bounds.items())


def user_message(error: BaseException) -> str:
    """One line for the user. A constructor's own refusal (:class:`ArgumentValueError`, perhaps inside
    jsonargparse's wrapping) is given its full config key; jsonargparse's nested explanation is folded into one."""
    inner: BaseException | None = error
    while inner is not None:
        if isinstance(inner, ArgumentValueError):
            return inner.describe(config_prefix(inner.owner))
        inner = inner.__cause__ or (None if inner.__suppress_context__ else inner.__context__)
    if isinstance(error, UserError):
        return str(error)
    return _trainer_keys(_one_line(error)) if type(error).__name__ == "MisconfigurationException" else _one_line(error)


def _trainer_keys(line: str) -> str:
    """Lightning's Trainer names its arguments bare (```max_steps` must be``, ``value -1.0 for limit_val_batches``):
    as the config keys they are (a plain word such as ``precision`` only where quoted)."""
    lightning = sys.modules.get("lightning.pytorch")
    names = inspect.signature(lightning.Trainer).parameters if lightning else {}
    return re.sub(r"(?<![\w.])`?([a-z]+_\w+|(?<=`)\w+)`?",
                  lambda m: m[0].replace(m[1], f"trainer.{m[1]}") if m[1] in names else m[0], line)

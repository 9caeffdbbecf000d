"""Errors the user caused, as one line naming the key or file and what is allowed: exit 2, no traceback."""

from __future__ import annotations

import inspect
import re

from inception_lab.models import Inception


class UserError(Exception):
    """A mistake in the user's input: reported as one line, without a traceback."""


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
    return f"{'.'.join(keys)}: {reason}" if keys else reason


def user_message(error: BaseException) -> str:
    """One line for the user; the network's own checks name their argument, here given its full config key."""
    inner: BaseException | None = error
    while inner is not None and (inner.__cause__ or not inner.__suppress_context__) and (
            inner.__cause__ or inner.__context__):  # down to a constructor's own check, if any
        inner = inner.__cause__ or inner.__context__
    if inner is not error and isinstance(inner, ValueError) and re.match(r"[\w.]+=", str(inner)):
        error = inner  # not jsonargparse's wrapping ("Does not validate against any of the Union subtypes")
    message = _one_line(error)
    name = re.match(r"(\w+)=", message)
    if name and name.group(1) in inspect.signature(Inception).parameters:
        message = f"model.net.init_args.{message}"
    return message

"""Constructor arguments checked from their type hints, once: what the CLI refuses (jsonargparse checks a value
against the same hints) a Python caller's constructor refuses too, in one line naming the argument.

    def __init__(self, dropout: UnitInterval = 0.4, head: Literal["gap", "fc"] = "gap") -> None:
        check_arguments(Inception, locals())  # ArgumentValueError: "dropout=1.5: must be in [0, 1)"
"""

from __future__ import annotations

import collections.abc
import functools
import numbers
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from jsonargparse.typing import restricted_number_type

from inception_lab.errors import ArgumentValueError, bounds_text

# [0, 1): dropout rates, label smoothing, warm-up fractions (1 would drop, smooth or warm up everything)
UnitInterval = restricted_number_type("UnitInterval", float, [(">=", 0), ("<", 1)])


@functools.cache
def _hints(function: Any) -> dict[str, Any]:
    return get_type_hints(function.__init__ if isinstance(function, type) else function)


def check_arguments(owner: Any, arguments: dict[str, Any]) -> None:
    """Check every argument of ``owner`` (a class: its ``__init__``; or a function) given in ``arguments`` (a call's
    ``locals()``) against its type hint. Raises :class:`ArgumentValueError` for the first that does not fit."""
    for name, hint in _hints(owner).items():
        if name != "return" and name in arguments:
            reason = refusal(arguments[name], hint)
            if reason is not None:
                raise ArgumentValueError(owner, reason, **{name: arguments[name]})


def refusal(value: Any, hint: Any) -> str | None:
    """Why ``value`` does not fit the type ``hint``, or None when it does (or the hint is not one checked here:
    callables, protocols)."""
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any or hint is object:
        return None
    if hint is None or hint is type(None):
        return None if value is None else "expected None"
    if origin is Literal:
        fits = any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in args)
        return None if fits else f"allowed values are {', '.join(map(repr, args))}"
    if origin is Union or origin is types.UnionType:
        reasons = [refusal(value, a) for a in args]
        if any(r is None for r in reasons):
            return None
        near = [r for a, r in zip(args, reasons) if _same_kind(value, a)]  # 'resnet' for Literal['table1', ...]
        return near[0] if len(near) == 1 else f"expected {' or '.join(_name(a) for a in args)}"
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (tuple, list)):
            return "expected a list"
        items = args if origin is tuple and args and args[-1] is not Ellipsis else None
        if items is not None and len(value) != len(items):
            return f"expected a list of {len(items)} entries"
        for i, item in enumerate(value):
            inner = refusal(item, items[i] if items is not None else args[0]) if args else None
            if inner is not None:
                return f"entry {i} ({item!r}): {inner}"
        return None
    if origin in (dict, collections.abc.Mapping):
        return None if isinstance(value, collections.abc.Mapping) else "expected a mapping"
    if origin is not None:  # Callable[...], type[...] and other generics: not checked here
        return None if origin is not collections.abc.Callable or callable(value) else "expected a callable"
    if not isinstance(hint, type):
        return None
    if issubclass(hint, bool):
        return None if isinstance(value, bool) else "expected true or false"
    if issubclass(hint, (int, float)):
        # numbers' ABCs: numpy's scalars (np.float32, np.int64) are numbers as Python's own are; bools are not
        kind = numbers.Integral if issubclass(hint, int) else numbers.Real
        if isinstance(value, bool) or not isinstance(value, kind):
            return f"expected {_name(hint)}"
        try:
            hint(value)
        except (TypeError, ValueError):
            return f"must be {_restriction(hint)}"
        return None
    if hint is Path:
        return None if isinstance(value, (str, Path)) else "expected a path"
    return None if isinstance(value, hint) else f"expected {_name(hint)}"


def _same_kind(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the kind ``hint`` takes (a string for a Literal of strings, a list for a tuple, a
    number for a number), so that its reason is the one to give for a Union."""
    origin = get_origin(hint)
    if origin is Literal:
        return any(type(value) is type(a) for a in get_args(hint))
    if origin in (tuple, list, collections.abc.Sequence):
        return isinstance(value, (tuple, list))
    if isinstance(hint, type) and issubclass(hint, (int, float)) and not issubclass(hint, bool):
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(hint, type) and isinstance(value, hint)


def _restriction(hint: type) -> str:
    """``PositiveInt``: "> 0"; ``UnitInterval``: "in [0, 1)"; a plain int or float: ""."""
    ops = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<", "eq": "==", "ne": "!="}
    return bounds_text({ops[op.__name__]: bound for op, bound in getattr(hint, "_restrictions", [])})


def _name(hint: Any) -> str:
    """How an allowed value reads in a message: "an integer > 0", "'naive'", "a list"."""
    if hint is type(None):
        return "null"
    if get_origin(hint) is Literal:
        return " or ".join(map(repr, get_args(hint)))
    if get_origin(hint) in (tuple, list, collections.abc.Sequence):
        return "a list"
    if isinstance(hint, type) and issubclass(hint, bool):
        return "true or false"
    if isinstance(hint, type) and issubclass(hint, (int, float)):
        limit = _restriction(hint)
        return ("an integer" if issubclass(hint, int) else "a number") + (f" {limit}" if limit else "")
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


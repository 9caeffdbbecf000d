"""Typed constructor arguments: the check jsonargparse makes from a signature's type on the command line (a
``Literal``'s choices, ``PositiveInt``, ``PositiveFloat``, ...), made the same way for Python callers."""

from __future__ import annotations

from typing import get_args

from jsonargparse.typing import restricted_number_type

DropoutRate = restricted_number_type("DropoutRate", float, [(">=", 0), ("<", 1)])


def check(name: str, value: object, allowed: object) -> None:
    """Raise ValueError naming the argument when ``value`` is not of the typed argument's allowed values."""
    choices = get_args(allowed)
    if choices and value not in choices:
        raise ValueError(f"{name}={value!r}: allowed values are {', '.join(map(repr, choices))}")
    if not choices:
        try:
            allowed(value)  # type: ignore[operator]
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name}={value!r}: {error}") from None

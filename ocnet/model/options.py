"""Configuration keys: :class:`Option` declares one, :class:`ConfigError` reports a bad value.

Both the run configuration (:mod:`ocnet.runs.config`) and the solvers (their ``options``) read
this module, and it imports neither, so solvers and configuration never import each other
in a circle.
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

# The bound of an integer option that names none: counts and sizes end up in torch, numpy
# and MPI calls that take 32-bit integers, and no sensible value comes near it.
INT_MAX = 2**31 - 1


class ConfigError(ValueError):
    """A bad configuration: the message says what and how to fix it."""


@dataclass(frozen=True)
class Option:
    """One configuration key: its type, default, help and admissible values.

    ``min`` and ``max`` bound a number, or each entry of a list; an integer option (or a
    list) without them lies in ``-INT_MAX-1 … INT_MAX``.  A list must not be empty, and a
    string must be printable text (no control characters), as it may become a path.
    """

    type: type
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    positive: bool = False  # strictly greater than 0
    resumable: bool = False  # how the run computes, not what: a resumed run may change it

    def convert(self, key: str, value: Any) -> Any:
        """Check ``value`` (from TOML, or a string from the command line) and convert it.

        Raises
        ------
        ConfigError
            For a value of the wrong type, out of range, or not among the choices; never
            another exception.
        """
        if isinstance(value, str) and self.type is not str:
            value = _parse_string(key, value, self.type)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{key} must be a finite number, got {show(value)}") from None
        if self.type is list:
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{key} must be a list of integers, got {show(value)}")
            if not value:
                raise ConfigError(f"{key} must not be empty")
        elif not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {_TYPE_NAMES[self.type]}, got {show(value)}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, self.choices))}; got {show(value)}")
        if isinstance(value, str):
            _check_text(key, value)
        integral = self.type in (int, list)
        low = self.min if self.min is not None or not integral else -INT_MAX - 1
        high = self.max if self.max is not None or not integral else INT_MAX
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key} must be finite, got {v}")
            if isinstance(v, bool) or isinstance(v, str):
                continue
            if self.positive and not v > 0:
                raise ConfigError(f"{key} must be positive, got {show(value)}")
            if low is not None and v < low:
                raise ConfigError(f"{key} must be at least {low}, got {show(value)}")
            if high is not None and v > high:
                raise ConfigError(f"{key} must be at most {high}, got {show(value)}")
        return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list of integers"}


def show(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to about ``limit`` characters, for messages that stay one line
    whatever a user typed (a huge integer has no repr beyond 4300 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"a {value.bit_length()}-bit integer"
    try:
        text = repr(value)
    except (ValueError, RecursionError):
        text = f"a {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _check_text(key: str, text: str) -> None:
    """Strings become paths, module names and TOML text: refuse control characters and
    lone surrogates (undecodable bytes of a command line), which none of those can hold."""
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise ConfigError(f"{key} must be printable text, got {show(text)} "
                              f"(character U+{ord(ch):04X} at position {text.index(ch)})")


def _parse_string(key: str, text: str, kind: type) -> Any:
    try:
        if kind is bool:
            return {"true": True, "1": True, "yes": True, "on": True,
                    "false": False, "0": False, "no": False, "off": False}[text.lower()]
        if kind is list:
            return [int(part) for part in text.replace(" ", "").strip("[]").split(",") if part]
        return kind(text)
    except (KeyError, ValueError):  # int() of more than 4300 digits is a ValueError too
        raise ConfigError(f"{key} must be {_TYPE_NAMES[kind]}, got {show(text)}") from None

"""Configuration keys: :class:`Option` declares one, :class:`ConfigError` reports a bad value.

Both the run configuration (:mod:`ocnet.config`) and the solvers (their ``options``) read
this module, and it imports neither, so solvers and configuration never import each other
in a circle.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence


class ConfigError(ValueError):
    """A bad configuration: the message says what and how to fix it."""


@dataclass(frozen=True)
class Option:
    """One configuration key: its type, default, help and admissible values."""

    type: type
    default: Any
    help: str
    choices: Sequence[Any] | None = None
    min: float | None = None
    max: float | None = None
    positive: bool = False  # strictly greater than 0

    def convert(self, key: str, value: Any) -> Any:
        """Check ``value`` (from TOML, or a string from the command line) and convert it."""
        if isinstance(value, str) and self.type is not str:
            value = _parse_string(key, value, self.type)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is list:
            if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        elif not isinstance(value, self.type) or (self.type is int and isinstance(value, bool)):
            raise ConfigError(f"{key} must be {_TYPE_NAMES[self.type]}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, self.choices))}; got {value!r}")
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{key} must be finite, got {v}")
            if self.positive and not v > 0:
                raise ConfigError(f"{key} must be positive, got {value!r}")
            if self.min is not None and v < self.min:
                raise ConfigError(f"{key} must be at least {self.min}, got {value!r}")
            if self.max is not None and v > self.max:
                raise ConfigError(f"{key} must be at most {self.max}, got {value!r}")
        return value


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list of integers"}


def _parse_string(key: str, text: str, kind: type) -> Any:
    try:
        if kind is bool:
            return {"true": True, "1": True, "yes": True, "on": True,
                    "false": False, "0": False, "no": False, "off": False}[text.lower()]
        if kind is list:
            return [int(part) for part in text.replace(" ", "").strip("[]").split(",") if part]
        return kind(text)
    except (KeyError, ValueError):
        raise ConfigError(f"{key} must be {_TYPE_NAMES[kind]}, got {text!r}") from None

"""Configuration files: reading a flat TOML file safely, and writing one back."""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path
from typing import Any, Mapping

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

from ..model.options import ConfigError, show

# A configuration file is a few hundred bytes; refusing anything much larger keeps a wrong
# path (a data file, a disk image) from being read at all.
MAX_TOML_BYTES = 1 << 20


def read_toml(path: str | Path) -> dict[str, Any]:
    """The keys of the TOML file ``path`` (flat: tables are refused), unconverted.

    Only a regular file of at most :data:`MAX_TOML_BYTES` is read, so that a directory, a
    FIFO or a device given by mistake neither blocks nor is read for ever.

    Raises
    ------
    ConfigError
        Naming the file: missing, unreadable, not a regular file, too large, not UTF-8, not
        valid TOML (nested too deeply included), or a table.
    """
    name = f"configuration file {str(path)!r}"
    try:
        kind = _file_kind(os.stat(path).st_mode)
        raw = b""
        if not kind:
            # O_NONBLOCK: should the path have become a FIFO since, opening it does not wait.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                kind = _file_kind(os.fstat(f.fileno()).st_mode)
                raw = b"" if kind else f.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{name} not found") from None
    except OSError as e:
        raise ConfigError(f"{name} cannot be read: {e.strerror or e}") from None
    except ValueError as e:  # a path with a NUL byte
        raise ConfigError(f"{name} cannot be read: {e}") from None
    if kind:
        raise ConfigError(f"{name} is not a regular file but {kind}")
    if len(raw) > MAX_TOML_BYTES:
        raise ConfigError(f"{name} is larger than {MAX_TOML_BYTES >> 20} MiB; a configuration file is a few lines")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{name} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{name} is not valid TOML: arrays or tables nested too deeply") from None
    except ValueError as e:  # TOMLDecodeError, or an integer of more than 4300 digits
        raise ConfigError(f"{name} is not valid TOML: {e}") from None
    nested = [k for k, v in data.items() if isinstance(v, dict)]
    if nested:
        raise ConfigError(f"{name}: tables are not used, found [{_key(nested[0])}]")
    return data


def _file_kind(mode: int) -> str:
    """'' for a regular file, else what it is, for a message."""
    if stat.S_ISREG(mode):
        return ""
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def _key(key: str) -> str:
    """A key for a message: TOML allows any text as a key, a message stays one short line."""
    return key if key.isprintable() and len(key) <= 60 else show(key)[1:-1]



def toml_value(value: Any) -> str:
    """``value`` (bool, int, float, string or list of them) as TOML text."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return repr(value) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    """A TOML basic string: quotes, backslashes and control characters escaped, everything
    else (non-ASCII included) as it is, since TOML is UTF-8."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def dump_toml(config: Mapping[str, Any]) -> str:
    """The configuration as TOML text (flat keys; readable by :func:`read_toml`)."""
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in config.items())

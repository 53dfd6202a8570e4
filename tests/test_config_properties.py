"""Property tests: whatever the flags or the file hold, :func:`resolve` returns a valid
configuration or raises :class:`ConfigError`, never another exception."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from ocnet import solvers
from ocnet.runs.config import (
    COMMON,
    ConfigError,
    all_solver_keys,
    dump_toml,
    read_toml,
    resolve,
    solver_options,
    toml_value,
)

# Fast enough for every run of the suite (well under a second per test); set
# OCNET_HYPOTHESIS_EXAMPLES to search harder.
FAST = settings(max_examples=int(os.environ.get("OCNET_HYPOTHESIS_EXAMPLES", "400")), deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

OWNERS = all_solver_keys()
KEYS = sorted({*COMMON, *OWNERS})  # every key of COMMON and of every registered solver
# Values of --plugin are imported: random text must never name a real module.
SAFE_PLUGIN = "zz_no_such_plugin_"


def solver_for(key: str) -> str:
    """A solver that takes ``key`` (any for a common key), so the value itself is checked."""
    return "serial" if key in COMMON else OWNERS[key][0]


def safe(key: str, value: Any) -> Any:
    if key == "plugin" and isinstance(value, str):
        return SAFE_PLUGIN + value.replace(",", "_")
    return value


def assert_valid(config: dict[str, Any], tmp_path: Path) -> None:
    """Every value converts again through its option, and the configuration survives its
    own config.toml."""
    schema = {**COMMON, **solver_options(config)}
    assert set(config) == set(schema)
    for key, option in schema.items():
        assert option.convert(key, config[key]) == config[key]
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(config), encoding="utf-8")
    assert resolve([], read_toml(path)) == config


def resolve_or_config_error(argv: list[str]) -> dict[str, Any] | None:
    try:
        config = resolve(argv)
    except ConfigError as e:
        assert "\n" not in str(e), "a message is one line"
        event("ConfigError")
        return None
    event("a configuration")
    return config


# -- values ------------------------------------------------------------------------------------
numbers = st.one_of(st.integers(), st.integers(min_value=-2**70, max_value=2**70).map(lambda i: i * 2**64),
                    st.floats(allow_nan=True, allow_infinity=True),
                    st.sampled_from([0, 1, -1, 2**31 - 1, 2**31, 2**63]))
scalars = st.one_of(numbers, st.booleans(), st.text(max_size=20))
toml_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=12)
flag_texts = st.one_of(
    st.text(max_size=30),
    numbers.map(lambda v: repr(v) if isinstance(v, float) else str(v)),
    st.sampled_from(["true", "false", "on", "inf", "-inf", "nan", "1e400", "", " ", "[]", "[[1]]", "1,,2",
                     "0x10", "1_000", "٣", "--", "-1"]),
    st.lists(st.integers(min_value=-2**40, max_value=2**40), max_size=5).map(lambda v: ",".join(map(str, v))),
)




def option_of(key: str) -> Any:
    solver = solver_for(key)
    return {**COMMON, **solvers.get(solver).options_for({"solver": solver})}[key]


def plausible(key: str) -> st.SearchStrategy:
    """Values near the valid ones of ``key`` (and just outside), so that valid
    configurations are drawn often, not only by chance."""
    option = option_of(key)
    if option.choices:
        return st.sampled_from(list(option.choices))
    return {int: st.integers(-3, 300), float: st.floats(-1.0, 20.0), bool: st.booleans(),
            list: st.lists(st.integers(-1, 64), max_size=4), str: st.text(max_size=10)}[option.type]


def as_flag(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return repr(value) if isinstance(value, float) else str(value)


def toml_text(value: Any) -> str:
    """TOML text for any value of ``toml_values`` (dictionaries as inline tables)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(str(k))} = {toml_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    return toml_value(value)


# -- properties ----------------------------------------------------------------------------------
@FAST
@given(key=st.sampled_from(KEYS), data=st.data(), with_equals=st.booleans())
def test_any_flag_value_gives_a_config_or_config_error(tmp_path, key, data, with_equals):
    text = data.draw(st.one_of(flag_texts, plausible(key).map(as_flag)))
    flag = "--" + key.replace("_", "-")
    text = safe(key, text)
    argv = ["--solver", solver_for(key)] + ([f"{flag}={text}"] if with_equals else [flag, text])
    config = resolve_or_config_error(argv)
    if config is not None:
        assert_valid(config, tmp_path)


@FAST
@given(key=st.sampled_from(KEYS), data=st.data())
def test_any_toml_value_gives_a_config_or_config_error(tmp_path, key, data):
    value = safe(key, data.draw(st.one_of(toml_values, plausible(key))))
    try:
        text = f"solver = {toml_value(solver_for(key))}\n{key} = {toml_text(value)}\n"
    except ValueError:  # an integer of more than 4300 digits has no text
        assume(False)
    path = tmp_path / "c.toml"
    path.write_text(text, encoding="utf-8")
    config = resolve_or_config_error(["--config", str(path)])
    if config is not None:
        assert_valid(config, tmp_path)
        option = {**COMMON, **solver_options(config)}[key]
        assert config[key] == option.convert(key, value)  # the file's value, converted


@FAST
@given(argv=st.lists(st.one_of(st.text(max_size=12), st.sampled_from([f"--{k.replace('_', '-')}" for k in KEYS]),
                               flag_texts), max_size=8))
def test_any_argv_gives_a_config_or_config_error(tmp_path, argv):
    # --config would read whatever path the text names; --plugin would import a module
    assume(not any(a.startswith(("--config", "--plugin")) for a in argv))
    config = resolve_or_config_error(argv)
    if config is not None:
        assert_valid(config, tmp_path)


TOKENS = ["epochs", "lr", "channels", "solver", "quiet", "rho", "a.b", "=", " = ", "[", "]", "{", "}", ",", '"',
          "'", "\n", "1", "-3", "1e400", "nan", "true", '"serial"', '"penalty"', "[x]", "#", "\\", "0x1F",
          "1979-05-27", '"""', "\x00", "é"]


@FAST
@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace")),
                         st.lists(st.sampled_from(TOKENS), max_size=30).map(lambda t: "".join(t).encode())))
def test_any_file_content_gives_a_config_or_config_error(tmp_path, content):
    assume(b"plugin" not in content)
    path = tmp_path / "c.toml"
    path.write_bytes(content)
    config = resolve_or_config_error(["--config", str(path)])
    if config is not None:
        assert_valid(config, tmp_path)


@pytest.mark.parametrize("key", KEYS)
def test_every_key_accepts_its_default(tmp_path, key):
    """Given as a flag, every key's default is taken as it is."""
    default = option_of(key).default
    config = resolve(["--solver", solver_for(key), "--" + key.replace("_", "-"), as_flag(default)])
    assert config[key] == default
    assert_valid(config, tmp_path)

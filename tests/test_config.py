"""Configuration: defaults, TOML, flags, validation messages."""
import os
import threading
from pathlib import Path

import pytest

from ocnet.runs.config import (
    COMMON,
    MAX_TOML_BYTES,
    RESUMABLE,
    ConfigError,
    _did_you_mean,
    differences,
    dump_toml,
    parse_argv,
    read_toml,
    resolve,
    toml_value,
)


def test_defaults_and_flags_override_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('lr = 0.01\nepochs = 3\nchannels = [8, 16]\nsolver = "serial"\n')
    config = resolve(["--config", str(f), "--epochs", "5", "--quiet", "--micro-batches=2"])
    assert config["lr"] == 0.01 and config["epochs"] == 5 and config["quiet"] is True
    assert config["channels"] == [8, 16] and config["micro_batches"] == 2
    assert config["batch_size"] == 64  # a default


def test_round_trip_through_toml(tmp_path):
    config = resolve(["--channels", "16,32,64", "--out", 'we"ird', "--lr", "1e-3"])
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(config))
    assert resolve([], read_toml(path)) == config


@pytest.mark.parametrize("argv,message", [
    (["--learning-rate", "0.1"], "unknown key 'learning_rate'"),
    (["--epocs", "3"], "did you mean 'epochs'"),
    (["--lr", "-0.1"], "lr must be positive"),
    (["--lr", "abc"], "lr must be a number"),
    (["--epochs", "2.5"], "epochs must be an integer"),
    (["--solver", "seriall"], "did you mean 'serial'"),
    (["--dtype", "float16"], "dtype must be one of float32, float64"),
    (["--channels", "16,x"], "channels must be a list of integers"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--filter", "nope"], "unknown filter 'nope'"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_values_give_one_clear_message(argv, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        resolve(argv)


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(["--config", str(tmp_path / "missing.toml")])
    bad = tmp_path / "bad.toml"
    bad.write_text("lr = = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        resolve(["--config", str(bad)])
    typed = tmp_path / "typed.toml"
    typed.write_text("epochs = true")
    with pytest.raises(ConfigError, match="epochs must be an integer"):
        resolve(["--config", str(typed)])


def test_negative_number_is_a_value_not_a_flag():
    assert parse_argv(["--lr", "-1"]) == {"lr": "-1"}
    assert parse_argv(["--quiet", "--lr", "2"]) == {"quiet": "true", "lr": "2"}


# -- every bad value: one ConfigError with one exact line ---------------------------------------
@pytest.mark.parametrize("argv,message", [
    (["--channels", ""], "channels must not be empty"),
    (["--channels", "16,0"], "channels must be at least 1, got [16, 0]"),
    (["--layers", "99999999999999999999999"], "layers must be at most 100000, got 99999999999999999999999"),
    (["--batch-size", "1e400"], "batch_size must be an integer, got '1e400'"),
    (["--batch-size", "2147483648"], "batch_size must be at most 2147483647, got 2147483648"),
    (["--seed", "-1"], "seed must be at least 0, got -1"),
    (["--epochs", "1000001"], "epochs must be at most 1000000, got 1000001"),
    (["--threads", "5000"], "threads must be at most 1024, got 5000"),
    (["--width", "1" * 5000], "width must be an integer, got '" + "1" * 58 + "…"),
    (["--lr", "1e400"], "lr must be finite, got inf"),
    (["--lr", "nan"], "lr must be finite, got nan"),
    (["--stall-timeout", "-1"], "stall_timeout must be at least 0.0, got -1.0"),
    (["--stall-timeout", "1e9"], "stall_timeout must be at most 31536000.0, got 1000000000.0"),
    (["--out", "a\x00b"], r"out must be printable text, got 'a\x00b' (character U+0000 at position 1)"),
    (["--data-dir", "x\udcff"], r"data_dir must be printable text, got 'x\udcff' (character U+DCFF at position 1)"),
    (["--overwrite", "maybe"], "overwrite must be true or false, got 'maybe'"),
])
def test_bad_values_exact_message(argv, message):
    with pytest.raises(ConfigError) as info:
        resolve(argv)
    assert str(info.value) == message


def test_bad_toml_values_name_the_file(tmp_path):
    f = tmp_path / "c.toml"
    cases = [("channels = []", "channels must not be empty"),
             ("layers = 99999999999999999999999", "layers must be at most 100000, got 99999999999999999999999"),
             ("lr = " + "9" * 400, "lr must be a finite number, got a 1329-bit integer"),
             ("lr = nan", "lr must be finite, got nan"),
             ("solver = [1]", "solver must be a string, got [1]"),
             ("epocs = 3", "unknown key 'epocs'; did you mean 'epochs'?"),
             ("rho = 2.0", "rho is an option of solver penalty / al, not of 'serial'"),
             ("plugin = 'no_such_module_xyz'", "plugin 'no_such_module_xyz' cannot be imported: "
                                               "No module named 'no_such_module_xyz'")]
    for text, message in cases:
        f.write_text(text)
        with pytest.raises(ConfigError) as info:
            resolve(["--config", str(f)])
        assert str(info.value) == f"configuration file {str(f)!r}: {message}"
    # a flag that overrides the file's value is the flag's problem, not the file's
    f.write_text("epochs = 3")
    with pytest.raises(ConfigError) as info:
        resolve(["--config", str(f), "--epochs", "0"])
    assert str(info.value) == "epochs must be at least 1, got 0"


def test_config_key_inside_the_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('config = "other.toml"\n')
    with pytest.raises(ConfigError) as info:
        resolve(["--config", str(f)])
    assert str(info.value) == (f"configuration file {str(f)!r}: config is a command-line flag only "
                               "(--config FILE), not a key of the file")
    with pytest.raises(ConfigError) as info:
        resolve([], {"config": "other.toml"})
    assert str(info.value) == "config is a command-line flag only (--config FILE), not a key of a configuration file"


def test_did_you_mean_never_repeats_the_word():
    assert _did_you_mean("config", ["config", "configs"]) == "; did you mean 'configs'?"
    assert _did_you_mean("config", ["config"]) == ""


@pytest.mark.parametrize("text,message", [
    ("a = " + "[" * 3000 + "]" * 3000, "is not valid TOML: arrays or tables nested too deeply"),
    ("a = " + "{b = " * 3000 + "1" + "}" * 3000, "is not valid TOML: arrays or tables nested too deeply"),
    ("[a]\nb = 1", ": tables are not used, found [a]"),
    ("layers = " + "1" * 5000, "is not valid TOML: Exceeds the limit (4300 digits) for integer string conversion: "
                               "value has 5000 digits; use sys.set_int_max_str_digits() to increase the limit"),
])
def test_malformed_toml_names_the_file(tmp_path, text, message):
    f = tmp_path / "c.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as info:
        read_toml(f)
    assert str(info.value) == f"configuration file {str(f)!r} {message}".replace(" :", ":")


def test_binary_and_huge_files(tmp_path):
    f = tmp_path / "c.toml"
    f.write_bytes(b"lr = 1\n\xff\xfe\x00")
    with pytest.raises(ConfigError) as info:
        read_toml(f)
    assert str(info.value) == f"configuration file {str(f)!r} is not UTF-8 text (byte 0xff at offset 7)"
    f.write_bytes(b"# " + b"x" * MAX_TOML_BYTES)
    with pytest.raises(ConfigError) as info:
        read_toml(f)
    assert str(info.value) == (f"configuration file {str(f)!r} is larger than 1 MiB; "
                               "a configuration file is a few lines")
    f.write_bytes(b"\xef\xbb\xbfepochs = 2\n")  # a byte-order mark, as some editors write
    assert read_toml(f) == {"epochs": 2}


def _returns_within(seconds, call):
    """``call()``'s ConfigError message, failing (instead of hanging) if it blocks."""
    result: list = []

    def target():
        try:
            call()
            result.append("no error")
        except ConfigError as e:
            result.append(str(e))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"blocked for {seconds} s"
    return result[0]


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero"])
def test_special_files_refused_without_reading(tmp_path, kind):
    if kind == "fifo":
        path, what = tmp_path / "c.toml", "a FIFO"
        os.mkfifo(path)
    elif kind == "directory":
        path, what = tmp_path, "a directory"
    else:
        path, what = Path("/dev/zero"), "a character device"
    message = _returns_within(5, lambda: resolve(["--config", str(path)]))
    assert message == f"configuration file {str(path)!r} is not a regular file but {what}"


def test_unreadable_paths(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_toml(tmp_path / "missing.toml")
    assert str(info.value) == f"configuration file {str(tmp_path / 'missing.toml')!r} not found"
    with pytest.raises(ConfigError) as info:
        read_toml("a\x00b")
    assert str(info.value) == "configuration file 'a\\x00b' cannot be read: embedded null byte"
    (tmp_path / "file").write_text("")
    below_a_file = tmp_path / "file" / "c.toml"
    with pytest.raises(ConfigError) as info:
        read_toml(below_a_file)
    assert str(info.value) == f"configuration file {str(below_a_file)!r} cannot be read: Not a directory"


# -- new keys, resumable keys ---------------------------------------------------------------------
def test_overwrite_and_stall_timeout():
    config = resolve([])
    assert config["overwrite"] is False and config["stall_timeout"] == 600.0
    config = resolve(["--overwrite", "--stall-timeout", "0"])
    assert config["overwrite"] is True and config["stall_timeout"] == 0.0
    assert COMMON["stall_timeout"].type is float and COMMON["stall_timeout"].min == 0.0


@pytest.mark.parametrize("given,plots", [([], "all"), (["--plots", "none"], "none"), (["--plots", "all"], "all"),
                                          (["--plots"], "all"), (["--plots", "false"], "none"),
                                          (["--plots", "True"], "all"), (["--plots", "off"], "none")])
def test_plots_all_or_none_and_the_booleans_it_took(given, plots):
    assert resolve(given)["plots"] == plots


def test_plots_of_a_file_as_a_boolean_or_a_word(tmp_path):
    path = tmp_path / "config.toml"
    for text, plots in (("plots = false", "none"), ("plots = true", "all"), ('plots = "none"', "none")):
        path.write_text(text + "\n")
        assert resolve(["--config", str(path)])["plots"] == plots
    assert 'plots = "all"' in dump_toml(resolve([])).splitlines()
    for bad in ("plots = 1", 'plots = "some"'):
        path.write_text(bad + "\n")
        with pytest.raises(ConfigError, match=r"plots must be one of all, none \(or true, false\); got"):
            resolve(["--config", str(path)])


def test_resumable_keys():
    assert RESUMABLE == {"epochs", "checkpoint_every", "quiet", "log_every", "verbose", "resume", "out", "overwrite",
                         "stall_timeout", "data_parallel", "threads", "device", "cuda_aware", "data_dir", "data",
                         "plugin", "timeline_steps", "plots"}
    assert RESUMABLE <= set(COMMON)


def test_differences(tmp_path):
    original = resolve(["--layers", "8", "--channels", "8,16"])
    path = tmp_path / "config.toml"
    path.write_text(dump_toml(original))
    old = read_toml(path)
    # only resumable keys (and options declared resumable) change: no differences
    assert differences(old, resolve(["--layers", "8", "--channels", "8,16", "--epochs", "50", "--quiet",
                                     "--out", "elsewhere", "--stall-timeout", "5", "--ahead", "3"])) == []
    changed = resolve(["--layers", "9", "--channels", "8,16", "--lr", "0.01", "--micro-batches", "2"])
    assert differences(old, changed) == ["layers: 8 → 9", "lr: 0.003 → 0.01", "micro_batches: 1 → 2"]
    assert differences(old, resolve(["--layers", "8", "--solver", "penalty"])) == [
        "solver: serial → penalty", "channels: [8, 16] → [16, 32]"]
    # a key missing from an older file compares against its default; values are converted
    del old["width"]
    old["lr"] = 1
    assert differences(old, resolve(["--layers", "8", "--channels", "8,16", "--lr", "1", "--width", "32"])) == []
    assert differences(old, resolve(["--layers", "8", "--channels", "8,16", "--width", "64"])) == [
        "width: 32 → 64", "lr: 1.0 → 0.003"]
    # a hand-edited value that does not convert differs from any valid one
    old["seed"] = "zero"
    assert differences(old, resolve(["--layers", "8", "--channels", "8,16", "--lr", "1"])) == ["seed: zero → 0"]


def test_dump_toml_round_trips_any_text(tmp_path):
    config = resolve(["--out", 'runs/ü 😀 "q" \\ back', "--data-dir", "\u00e9t\u00e9"])
    text = dump_toml(config)
    assert 'out = "runs/ü 😀 \\"q\\" \\\\ back"' in text.splitlines()
    (tmp_path / "config.toml").write_text(text, encoding="utf-8")
    assert resolve([], read_toml(tmp_path / "config.toml")) == config
    assert toml_value([1, 2]) == "[1, 2]" and toml_value(1e-05) == "1e-05" and toml_value(True) == "true"
    assert toml_value("a\x7fb") == '"a\\u007Fb"'


def test_a_resume_path_with_a_nul_byte_is_a_config_error():
    """Read before the flags are checked (the run's own keys), such a path must not raise
    the operating system's ValueError but the flag's own message."""
    with pytest.raises(ConfigError, match="resume must be printable text"):
        resolve(["--resume", "~\x00"])

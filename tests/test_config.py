"""Configuration: defaults, TOML, flags, validation messages."""
import pytest

from ocnet.config import ConfigError, dump_toml, parse_argv, read_toml, resolve


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

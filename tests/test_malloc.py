"""``--malloc``: the option, what each setting means, that a rank's process runs under it, and
that a run records it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ocnet.run import main
from ocnet.runs import allocator
from ocnet.runs.config import ConfigError, differences, resolve

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--limit-batches", "2", "--layers", "2", "--quiet", "--plots", "none",
        "--timeline-steps", "0"]


def test_option_takes_the_settings_and_may_change_on_resume():
    assert resolve([])["malloc"] == "auto"
    assert resolve(["--malloc", "glibc"])["malloc"] == "glibc"
    with pytest.raises(ConfigError, match="malloc must be one of auto, tuned, glibc; got 'default'"):
        resolve(["--malloc", "default"])
    assert differences({"malloc": "tuned"}, resolve(["--malloc", "glibc"])) == []  # how, not what, a run computes


@pytest.mark.parametrize("malloc,environ,expected", [
    ("auto", {}, allocator.DEFAULT),
    ("auto", {"OCNET_MALLOC": "tuned"}, "tuned"),
    ("auto", {"OCNET_MALLOC": "glibc"}, "glibc"),
    ("auto", {"OCNET_MALLOC": "default"}, "glibc"),  # the benchmarks' older word
    ("auto", {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "glibc"),  # the user's own thresholds stand
    ("auto", {"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, allocator.DEFAULT),
    ("auto", {"OCNET_MALLOC": "tuned", "GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}, "tuned"),
    ("glibc", {"OCNET_MALLOC": "tuned"}, "glibc"),  # the option given overrides the environment
    ("tuned", {"OCNET_MALLOC": "glibc"}, "tuned"),
])
def test_setting(malloc, environ, expected):
    assert allocator.setting(malloc, environ) == expected


def test_bad_setting_and_environment_are_refused():
    with pytest.raises(ValueError, match="OCNET_MALLOC must be tuned or glibc"):
        allocator.setting("auto", {"OCNET_MALLOC": "big"})
    with pytest.raises(ValueError, match="malloc must be one of"):
        allocator.setting("fast", {})


def test_without_glibc_tuned_changes_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "is_glibc", lambda: False)
    assert allocator.tune() is False
    assert allocator.apply("tuned", {}) == "unchanged"
    assert allocator.apply("glibc", {}) == "glibc"


#: A rank's set-up (:func:`ocnet.runs.job.setup`) in a fresh process, then a 64 MiB tensor
#: made and freed: how far the process's resident memory grew and fell.
_PROBE = """
import json, sys
import torch
from ocnet.ranks import comm
from ocnet.runs import job

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

s = job.setup(sys.argv[1:], comm.world())
before = rss()
x = torch.ones(16 * 2**20)  # 64 MiB, every page written
grown = rss() - before
del x
print(json.dumps({"malloc": s["malloc"], "grown": grown, "fell": before + grown - rss()}))
s["claim"].release(started=False)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or not allocator.is_glibc(), reason="glibc's thresholds")
@pytest.mark.parametrize("malloc", ["tuned", "glibc"])
def test_a_rank_keeps_freed_memory_only_when_tuned(tmp_path, malloc):
    """Glibc maps a 64 MiB block of its own and unmaps it when freed, whatever its dynamic
    mmap threshold (at most 32 MiB); with the thresholds raised the block comes from the heap
    and stays there.  Resident sizes, not times: nothing the machine's load changes."""
    env = {k: v for k, v in os.environ.items() if k not in (allocator.ENV, "GLIBC_TUNABLES")}
    env.update(PYTHONPATH=str(ROOT), OCNET_SUPERVISOR="0")
    done = subprocess.run([sys.executable, "-c", _PROBE, "--malloc", malloc, "--layers", "2",
                           "--out", str(tmp_path / "run")], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["malloc"] == malloc
    assert probe["grown"] >= 60 * 2**20
    if malloc == "tuned":
        assert probe["fell"] < 8 * 2**20
    else:
        assert probe["fell"] >= 56 * 2**20


def test_a_run_records_its_setting(tmp_path):
    # glibc: leaves this test process's allocator as it is
    assert main([*FAST, "--malloc", "glibc", "--out", str(tmp_path / "run")]) == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["malloc"] == "glibc"

"""Timelines: what the recorder keeps, the run directory's files, the Gantt chart, real runs."""
from __future__ import annotations

import json

import pytest
import torch

from ocnet.model.grid import Partition
from ocnet.model.problem import build
from ocnet.ranks import timeline
from ocnet.ranks.comm import Request, SelfComm, _wait
from ocnet.ranks.watchdog import Progress
from ocnet.results import gantt
from ocnet.results.plot import main as plot_main
from ocnet.runs.config import ConfigError, differences, help_text, resolve
from ocnet.solvers.penalty import Penalty

COMPUTE = {k for k in timeline.KINDS if k not in ("send", "wait", "reduce")}


def _window(step: int, epoch: int = 0, job: float = 1.0, ranks: int = 2, since: int = 0) -> timeline.Window:
    events = [("forward", 0.1 * step, 0.1 * step + 0.04, {"steps": 2, "level": 1}),
              ("wait", 0.1 * step + 0.04, 0.1 * step + 0.06, {"on": "recv", "peer": 1, "tag": 5}),
              ("send", 0.1 * step + 0.06, 0.1 * step + 0.061, {"peer": 1, "tag": 4, "bytes": 64})]
    return timeline.Window(epoch, step, 0.1 * step, 0.1 * step + 0.09, events, job, ranks, since)


def _write(run_dir, rank: int, windows: list[timeline.Window]) -> None:
    path = timeline.path_of(run_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"format": 1, "rank": rank, "windows": [w.to_json() for w in windows]}))


# -- the recorder in a run ----------------------------------------------------------------------
def test_window_of_steps_and_file_round_trip(tmp_path, monkeypatch):
    log = timeline.Log(tmp_path, 0, 1, steps_per_epoch=3, job=7.0)
    assert [log.records(b) for b in range(6)] == [False, True, True, True, False, False]
    assert [log.epoch_records(n) for n in (1, 2, 5)] == [False, True, True]
    assert not log.epoch_records(10, skip=4) and log.epoch_records(10, skip=3)
    log.align(lambda clock: clock())
    with log.step(0, 2):
        with timeline.span("forward", steps=3, level=1):
            pass
        _wait(lambda: True, Progress(), ("recv", 1, 9))
    with timeline.span("forward", steps=1):  # outside a window: not recorded
        pass
    log.write()
    assert sorted(p.name for p in (tmp_path / "timeline").iterdir()) == ["rank0.json"]  # no temporary left
    (w,) = timeline.load(tmp_path)[0]
    assert (w.epoch, w.step, w.job, w.ranks) == (0, 2, 7.0, 1)
    assert [(k, info) for k, _, _, info in w.events] == [
        ("forward", {"steps": 3, "level": 1}), ("wait", {"on": "recv", "peer": 1, "tag": 9})]
    assert all(w.start <= a <= b <= w.end for _, a, b, _ in w.events)
    # bounded: a full log records no further step
    monkeypatch.setattr(timeline, "MAX_EVENTS", 2)
    assert not log.records(1) and log.epoch_records(5)  # the barrier does not depend on the fill


def test_resumed_run_replaces_only_the_lost_steps(tmp_path):
    # job 1 on 2 ranks recorded steps 2, 3, 25, 26 and died; its checkpoint was after step 23
    for rank in (0, 1):
        _write(tmp_path, rank, [_window(s) for s in (2, 3, 25, 26)])
    log = timeline.Log(tmp_path, 0, 1, steps_per_epoch=2, job=2.0, after_step=23)  # job 2, one rank
    assert [w.step for w in log.windows] == [2, 3]
    log.align(lambda clock: clock())
    with log.step(1, 25):
        pass
    log.write()
    loaded = timeline.load(tmp_path)
    assert [(w.step, w.job) for w in loaded[0]] == [(2, 1.0), (3, 1.0), (25, 2.0)]
    assert [(w.step, w.job) for w in loaded[1]] == [(2, 1.0), (3, 1.0)]  # 25 and 26 were lost with job 1
    (tmp_path / "timeline" / "rank1.json").write_text("{torn")
    assert timeline.load(tmp_path)[1] == []


def test_waits_are_recorded_on_both_paths_and_cost_nothing_when_off():
    progress = Progress()

    class Slow:  # an MPI request that completes after a few polls
        def __init__(self, polls: int) -> None:
            self.polls = polls

        def Test(self) -> bool:
            self.polls -= 1
            return self.polls < 0

    rec = timeline.Recorder()
    with timeline.recording(rec):
        Request([Slow(200)], progress=progress, what=("recv", 3, 7)).wait()  # past the spin: sleeps
        Request([Slow(0)], progress=progress, what=("send", 2, 8)).wait()  # the fast path
        _wait(lambda: True, progress, ("bcast", 0))
        _wait(lambda: True, progress, ("barrier",))
    assert [(k, info) for k, _, _, info in rec.events] == [
        ("wait", {"on": "recv", "peer": 3, "tag": 7}), ("wait", {"on": "send", "peer": 2, "tag": 8}),
        ("reduce", {"op": "bcast", "root": 0}), ("reduce", {"op": "barrier"})]
    assert progress.ticks == 4 and progress.waiting is None  # the watchdog's view is unchanged
    _wait(lambda: True, progress, ("barrier",))
    assert len(rec.events) == 4 and progress.ticks == 5


def test_penalty_spans_are_leaves_that_cover_every_layer():
    problem = build((1, 8, 8), 4, net="dense", layers=6, width=8, seed=0)
    solver = Penalty(problem.local(Partition(6, 1), 0), SelfComm(), torch.optim.Adam, blocks=3)
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 4, (10,))
    solver.begin_epoch(0, x, y)
    rec = timeline.Recorder()
    with timeline.recording(rec):
        solver.step(x[:5], y[:5], torch.arange(5))
    kinds = [k for k, *_ in rec.events]
    assert kinds == ["forward_graph"] * 3 + ["head", "backward", "update", "update"]
    assert sum(e[3]["steps"] for e in rec.events if e[0] == "forward_graph") == 6
    assert [e[3]["block"] for e in rec.events if e[0] == "forward_graph"] == [0, 1, 2]
    assert [e[3].get("of") for e in rec.events if e[0] == "update"] == ["theta", "z"]
    assert rec.events[4][3]["steps"] == 6 and rec.events[5][3]["steps"] == 6
    ends = [b for _, _, b, _ in rec.events]
    assert all(rec.events[i + 1][1] >= ends[i] for i in range(len(ends) - 1))  # no span inside another


# -- configuration and the chart -------------------------------------------------------------------
def test_timeline_option_is_declared_validated_and_resumable():
    assert resolve([])["timeline_steps"] == 4
    assert resolve(["--timeline-steps", "0"])["timeline_steps"] == 0
    with pytest.raises(ConfigError, match="timeline_steps"):
        resolve(["--timeline-steps", "-1"])
    assert "--timeline-steps" in help_text()
    assert differences(resolve(["--timeline-steps", "2"]), resolve([])) == []


def test_steps_shown_by_default_and_on_request(tmp_path, capsys):
    windows = {r: [_window(s, epoch=s // 20) for s in (2, 3, 4, 5, 22, 23, 24, 25)] for r in (0, 1)}
    windows[1] = [w for w in windows[1] if w.step != 22]
    default = gantt.choose(windows)
    assert [w.step for w in default[0]] == [23, 24, 25] == [w.step for w in default[1]]  # last epoch, on all
    assert [w.step for w in gantt.choose(windows, (3, 4))[1]] == [3, 4]
    assert gantt.parse_steps("7") == (7, 7) and gantt.parse_steps("3:9") == (3, 9)
    for bad in ("9:3", "x", "1:y"):
        with pytest.raises(ValueError):
            gantt.parse_steps(bad)
    assert gantt.draw(tmp_path, windows=windows) == tmp_path / "timeline.png"
    assert (tmp_path / "timeline.png").stat().st_size > 10_000
    assert gantt.draw(tmp_path, tmp_path / "none.png", steps=(100, 200), windows=windows) is None
    (tmp_path / "history.jsonl").write_text("")
    with pytest.raises(SystemExit) as e:
        plot_main([str(tmp_path), "--steps", "9:3"])
    assert e.value.code == 2 and "range is empty" in capsys.readouterr().err


# -- real runs -------------------------------------------------------------------------------------
@pytest.mark.figures
def test_run_resumed_in_one_process_adds_to_its_timeline(tmp_path):
    from ocnet.run import main
    out = str(tmp_path / "run")
    flags = ["--layers", "2", "--width", "8", "--quiet", "--timeline-steps", "2", "--checkpoint-every", "1"]
    assert main([*flags, "--epochs", "1", "--out", out]) == 0
    first = timeline.load(out)[0]
    assert [w.step for w in first] == [2, 3]
    assert main([*flags, "--epochs", "2", "--resume", out]) == 0
    steps = [w.step for w in timeline.load(out)[0]]
    assert steps == [2, 3, 25, 26]  # 23 steps per epoch (1437 samples, batch 64)
    assert (tmp_path / "run" / "timeline.png").is_file()


def _events(windows: list[timeline.Window], kind: str) -> list[timeline.Event]:
    return [e for w in windows for e in w.events if e[0] == kind]


def _check_common(run_dir, ranks: int) -> dict[int, list[timeline.Window]]:
    loaded = timeline.load(run_dir)
    assert sorted(loaded) == list(range(ranks))
    assert (run_dir / "timeline.png").stat().st_size > 10_000
    for r, windows in loaded.items():
        assert [w.step for w in windows] == [2, 3]
        for w in windows:
            assert all(w.start <= a <= b <= w.end for _, a, b, _ in w.events)  # within its step
        assert _events(windows, "wait") and _events(windows, "reduce")
        sends = _events(windows, "send")
        assert sends and all(e[3]["peer"] == 1 - r for e in sends)
    return loaded


@pytest.mark.mpi
def test_pipeline_timeline_of_a_real_run(mpi, tmp_path):
    out = tmp_path / "serial"
    proc = mpi(2, "ocnet.run", "--solver", "serial", "--micro-batches", "4", "--layers", "4", "--width", "8",
               "--epochs", "1", "--timeline-steps", "2", "--quiet", "--out", str(out), module=True, plain=True,
               plots=True)
    assert proc.returncode == 0, proc.stderr
    loaded = _check_common(out, 2)
    first, last = loaded[0][0], loaded[1][0]
    assert len(_events([first], "send")) == 4  # one forward message per micro-batch
    assert {e[3]["bytes"] for e in _events([first], "send")} == {16 * 8 * 4}  # 64 samples / 4, width 8, float32
    # the last rank's first micro-batch arrives after rank 0 posted it (one node: one clock, one origin)
    arrival = next(e for e in last.events if e[0] == "wait" and e[3]["on"] == "recv")
    assert arrival[2] >= _events([first], "send")[0][1]
    forward = {r: [e for e in ws[0].events if e[0] in ("forward", "forward_graph")] for r, ws in loaded.items()}
    if forward[0] and forward[1]:  # the pipeline's compute spans, where the sweep records them
        assert forward[1][0][1] >= forward[0][0][2]


@pytest.mark.mpi
def test_penalty_timeline_of_a_real_run(mpi, tmp_path):
    out = tmp_path / "penalty"
    proc = mpi(2, "ocnet.run", "--solver", "penalty", "--layers", "4", "--width", "8", "--epochs", "1",
               "--timeline-steps", "2", "--quiet", "--out", str(out), module=True, plain=True, plots=True)
    assert proc.returncode == 0, proc.stderr
    loaded = _check_common(out, 2)
    for r, windows in loaded.items():
        for w in windows:
            kinds = [k for k, *_ in w.events]
            assert kinds.count("forward_graph") == 1 and kinds.count("backward") == 1
            assert kinds.count("head") == (r == 1)
            assert sum(e[3]["steps"] for e in w.events if e[0] == "forward_graph") == 2
            assert [e[3]["bytes"] for e in w.events if e[0] == "send"] == [64 * 8 * 4]
            compute = [(a, b) for k, a, b, _ in w.events if k in COMPUTE]
            comm = [(a, b) for k, a, b, _ in w.events if k not in COMPUTE]
            assert not any(ca < a < cb or ca < b < cb for a, b in comm for ca, cb in compute)  # no wait inside

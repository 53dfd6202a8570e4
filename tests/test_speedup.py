"""The performance model on the real solvers: replayed schedules, determinism, the CLI."""
from __future__ import annotations

import json
import math

import pytest

from ocnet.perf import calibrate, speedup
from ocnet.perf.replay import COMPUTE, Link
from ocnet.ranks.compress import INDEX_BYTES, message_bytes
from ocnet.runs.config import given

# one stage: the formulas below count its layers alone
CONV = ["--net", "conv", "--channels", "16"]
FREE = Link(latency=0.0, bandwidth=math.inf, reduction=0.0)
COSTS = {"forward": 1e-3, "forward_graph": 2e-3, "backward": 5e-3, "vjp": 2e-3, "vjp_recompute": 4e-3,
         "weight_grad": 3e-3, "head": 0.0, "update": 0.0}
CALIBRATION = {"compute": {"16": COSTS}, "link": vars(Link(latency=2e-5, bandwidth=3e9, reduction=4e-5)),
               "mgrit_factors": {"4,2": 0.05, "2,2": 0.02, "8,2": 0.2, "2,3": 0.1, "4,3": 0.3}}


def config(*flags: str) -> dict:
    return speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "64",
                                         "--batch-size", "16", *flags]), {"solver": "serial"})


@pytest.mark.parametrize("P,n", [(8, 8), (4, 3), (1, 4)])
def test_real_serial_pipeline_has_the_1f1b_critical_path(P, n):
    """The real serial solver's own schedule: P ranks × n micro-batches of N/P layers each
    take (n + P − 1)(f + b)·N/P per step (head and update cost nothing here)."""
    cfg = speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "64",
                                        "--batch-size", "16", "--micro-batches", str(n)]), {"solver": "serial"})
    step = speedup.replay_step(cfg, P, COSTS, FREE)["step"]
    per_rank = 64 // P
    assert step == pytest.approx((n + P - 1) * (COSTS["forward_graph"] + COSTS["backward"]) * per_rank, rel=1e-9)


def test_replay_of_mgrit_is_charged_and_deterministic():
    cfg = speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "64", "--batch-size",
                                        "16"]), {"solver": "mgrit", "mgrit_mode": "one_shot", "mgrit_iters": 2})
    a = speedup.replay_step(cfg, 8, COSTS, CALIBRATION_LINK)
    b = speedup.replay_step(cfg, 8, COSTS, CALIBRATION_LINK)
    assert a["step"] == b["step"] > 0
    assert a["uncharged"] == {}
    kinds = {e[0] for events in a["events"] for e in events}
    assert {"forward", "vjp", "send"} <= kinds
    # more iterations cost more; P = 8 is faster than P = 1 for this compute-bound case
    c = speedup.replay_step({**cfg, "mgrit_iters": 3}, 8, COSTS, CALIBRATION_LINK)
    assert c["step"] > a["step"]
    assert speedup.replay_step(cfg, 1, COSTS, CALIBRATION_LINK)["step"] > a["step"]


CALIBRATION_LINK = Link(**CALIBRATION["link"])


def test_message_bytes_scale_to_the_configured_state():
    cfg = config("--channels", "16,32")
    mini = speedup.Miniature(cfg, 2)
    x, _, _ = mini.data()
    u = mini.problem.opening(x)  # (2, 1, 4, 4) here; (16, 16, 8, 8) float32 configured
    assert tuple(u.shape) == (2, 1, 4, 4)
    assert mini.message_bytes(u) == 16 * 16 * 8 * 8 * 4
    assert mini.message_bytes(u[:1]) == 8 * 16 * 8 * 8 * 4
    import torch
    assert mini.message_bytes(torch.zeros(3)) == 12  # not a state: its own bytes


def test_predictions_are_deterministic_and_complete(tmp_path):
    values = given(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "16",
                    "--micro-batches", "4"])
    a = speedup.predict(values, CALIBRATION, max_ranks=32, cores=4, variants=["serial", "mgrit-one-shot", "penalty"],
                        recommend=False)
    b = speedup.predict(values, CALIBRATION, max_ranks=32, cores=4, variants=["serial", "mgrit-one-shot", "penalty"],
                        recommend=False)
    assert json.dumps(a) == json.dumps(b)
    serial = a["solvers"]["serial"]["per_rank_count"]
    assert serial["1"]["speedup"] == 1.0
    assert serial["8"]["oversubscribed"] and not serial["4"]["oversubscribed"]
    assert "skipped" in serial["32"] and "32 ranks but only 16 layers" in serial["32"]["skipped"]
    # mgrit with c = 2, 2 levels (the defaults): ranks start at multiples of 2, so 16 layers admit 8 ranks
    mgrit = a["solvers"]["mgrit-one-shot"]["per_rank_count"]
    assert "step" in mgrit["8"] and "skipped" in mgrit["16"]
    for s in a["solvers"].values():
        for P, row in s["per_rank_count"].items():
            if "step" in row:
                assert row["epoch"] == pytest.approx(row["step"] * a["steps_per_epoch"])
                assert row["efficiency"] == pytest.approx(row["speedup"] / int(P))
    speedup.plot(a, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 0


def test_exact_iterations_from_the_convergence_factor():
    assert speedup.exact_iterations(0.1, 1e-6, 30) == 6
    assert speedup.exact_iterations(1.2, 1e-6, 30) is None
    assert speedup.exact_iterations(0.9, 1e-6, 30) == 31  # capped: does not converge in max_iter


def test_cli_writes_json_and_png(tmp_path):
    cal = tmp_path / "cal.json"
    cal.write_text(json.dumps(CALIBRATION))
    out = tmp_path / "out"
    code = speedup.main(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "16",
                         "--calibration", str(cal), "--max-ranks", "4", "--out", str(out), "--solvers",
                         "serial,mgrit-exact", "--cores", "2"])
    assert code == 0
    result = json.loads((out / "speedup.json").read_text())
    assert set(result["solvers"]) == {"serial", "mgrit-exact"}
    best = result["mgrit_recommendation"]["4"]
    # the replayed settings are ranked by predicted time; the iterations come from the factor
    assert best["iterations"] == speedup.exact_iterations(best["factor"], 1e-6, 30)
    assert (out / "speedup.png").exists()


def test_cli_rejects_a_bad_key(capsys):
    assert speedup.main(["--layrs", "16"]) == 2
    assert "unknown key" in capsys.readouterr().err


@pytest.mark.mpi
def test_link_calibration_under_mpiexec(mpi, tmp_path):
    out = tmp_path / "link.json"
    proc = mpi(3, "speedup_link.py", str(out), timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    assert len(seen) == 3 and all(s == seen[0] for s in seen)  # every rank holds rank 0's numbers
    assert 0 < seen[0]["latency"] < 0.1 and seen[0]["bandwidth"] > 1e6 and seen[0]["reduction"] > 0


def test_data_groups_replay_one_group_and_its_gradient_average():
    """2 groups × 1 rank: one rank's step on its half of the batch, then the average of the
    configured network's gradient over 2 ranks; P = 1 cannot hold 2 groups."""
    grid = speedup.predict(given(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "32",
                                  "--data-parallel", "2"]), CALIBRATION, max_ranks=4, cores=4, variants=["serial"],
                           recommend=False)
    half = speedup.predict(given(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "16"]),
                           CALIBRATION, max_ranks=1, cores=4, variants=["serial"], recommend=False)
    rows = grid["solvers"]["serial"]["per_rank_count"]
    assert "--data-parallel 2 does not divide the job's 1 ranks" in rows["1"]["skipped"]
    cfg = speedup.group_config(speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "16",
                                                             "--batch-size", "32"]), {"solver": "serial"}))
    nbytes = speedup.Miniature(cfg, 2).gradient_bytes(speedup.get_solver("serial"), 1)[0]
    params = list(calibrate.build_problem(cfg).parameters())  # one rank holds them all
    assert nbytes == 4 * (sum(p.numel() for p in params) + len(params))
    average = Link(**CALIBRATION["link"]).collective(2, nbytes)
    assert rows["2"]["step"] == pytest.approx(half["solvers"]["serial"]["per_rank_count"]["1"]["step"] + average)
    assert rows["2"]["speedup"] == pytest.approx(grid["reference_step"] / rows["2"]["step"])
    assert grid["reference_step"] == pytest.approx(2 * half["solvers"]["serial"]["per_rank_count"]["1"]["step"])


def test_running_ahead_is_decided_by_the_virtual_clocks():
    """A costly head slows the last rank: with ``ahead=1`` the first rank runs a third forward
    before its first backward instead of waiting for the adjoint, as a real run would; the
    replay decides by the virtual clocks, so it is deterministic, and it is no slower."""
    costs = {**COSTS, "head": 4e-3}
    cfg = speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "16",
                                        "--batch-size", "16", "--micro-batches", "8"]), {"solver": "serial"})
    runs = {ahead: speedup.replay_step({**cfg, "ahead": ahead}, 2, costs, FREE) for ahead in (0, 1)}
    again = speedup.replay_step({**cfg, "ahead": 1}, 2, costs, FREE)
    assert again["step"] == runs[1]["step"]
    for ahead, run in runs.items():
        first = [e[0] for e in run["events"][0] if e[0] in ("forward_graph", "backward")]
        assert first.index("backward") == 2 + ahead
    assert runs[1]["step"] <= runs[0]["step"] + 1e-12


@pytest.mark.parametrize("variant, P, steady", [("local-0", 4, 4), ("amp", 4, 4)])
def test_steps_that_overlap_are_timed_in_the_steady_state(variant, P, steady):
    """Local parallelism without overlap and AMP keep their pipelines full from one step into
    the next: on free links with the head and update costing nothing, a step on P ranks takes
    one rank's share of the work, ``1/P`` of one rank's step (a cold start would charge the
    pipeline's fill in every step). AMP updates rarely here, so that no forward is run again."""
    config = speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "16",
                                           "--micro-batches", "4", "--amp-update-every", "64"]),
                                    speedup.VARIANTS[variant])
    one = speedup.replay_step(config, 1, COSTS, FREE, steps=2)["step"]
    many = speedup.replay_step(config, P, COSTS, FREE, steps=2)["step"]
    assert one / many == pytest.approx(steady, rel=0.02)
    cold = speedup.replay_step(config, P, COSTS, FREE, steps=1)["step"]
    assert cold > 1.2 * many  # the fill of the pipeline, which the steady state does not pay


def test_a_compressed_exchange_is_replayed_at_the_configured_networks_message_sizes():
    """Top-k at D = 2, gathered: the replay gathers what the run's exchange would — per step ceil(R n)
    entries of each configured tensor of n entries, plus a count and a flag per tensor — over
    a slow link, and so predicts a shorter step than the dense allreduce."""
    slow = Link(latency=2e-5, bandwidth=1e6, reduction=4e-5)

    def replayed(*flags):
        cfg = speedup.group_config(speedup.variant_config(
            given(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "32", "--data-parallel", "2",
                   *flags]), {"solver": "serial"}))
        r = speedup.replay_step(cfg, 2, COSTS, slow)
        return r["step"], [e[3] for events in r["events"] for e in events if e[0] == "reduce"], cfg

    dense, dense_events, cfg = replayed()
    topk, events, _ = replayed("--compress", "topk", "--compress-ratio", "0.01", "--compress-exchange", "gather")
    sizes = [p.numel() for p in calibrate.build_problem(cfg).parameters()]
    gathered = [e["bytes"] for e in events if e["what"] == "compressed gradients"]
    assert sum(gathered) == message_bytes(sum(math.ceil(0.01 * n) for n in sizes), 4) + len(sizes) * (INDEX_BYTES + 4)
    assert dense_events[0]["bytes"] == 4 * (sum(sizes) + len(sizes))
    allgathers = sum(slow.allgather(2, b) for b in gathered)
    assert topk - allgathers == pytest.approx(dense - slow.collective(2, dense_events[0]["bytes"]), rel=1e-9)
    assert topk < dense / 2


def test_nested_iteration_and_mgopt_are_replayed_from_their_schedules():
    """Nested iteration 4,2,1 with 2, 2 and 4 of 8 epochs: the step is the levels' serial steps
    of 4, 8 and 16 layers weighted by their epochs (7 ms a layer here). MG/Opt's V-cycle (one
    pre-smoothing step, a fine gradient, a coarse gradient and step on 8 layers, a line-search
    forward) replays with every kind charged, and costs more than a serial step."""
    def cfg(*flags, solver="serial"):
        return speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "16",
                                             *flags]), speedup.VARIANTS[solver])

    per_layer = COSTS["forward_graph"] + COSTS["backward"]
    nested = speedup.replay_step(cfg("--nested", "4,2,1", "--nested-epochs", "2,2", "--epochs", "8"), 1, COSTS, FREE)
    assert nested["step"] == pytest.approx((2 * 4 + 2 * 8 + 4 * 16) / 8 * per_layer, rel=1e-9)
    mgopt = speedup.replay_step(cfg(solver="mgopt"), 2, COSTS, CALIBRATION_LINK)
    assert mgopt["uncharged"] == {}
    fine, coarse = 16 * per_layer, 8 * per_layer
    line_search = 16 * COSTS["forward"]
    assert mgopt["step"] >= 2 * fine + 2 * coarse + line_search
    assert mgopt["step"] > speedup.replay_step(cfg(), 2, COSTS, CALIBRATION_LINK)["step"]


def test_coverage_of_a_solver_without_a_one_rank_partition_is_none():
    """Local parallelism with an overlap needs two blocks: no step at P = 1 to cover (the
    scaling benchmark stopped at it); without the overlap it has one."""
    from ocnet.runs.config import resolve
    flags = ["--problem", "digits", "--net", "conv", "--channels", "4", "--layers", "2", "--batch-size", "8",
             "--solver", "local"]
    assert calibrate.profile(resolve([*flags, "--local-overlap", "1"]), steps=1) is None
    assert 0 < calibrate.profile(resolve(flags), steps=1)["coverage"] <= 1


def exact_mgrit(*flags: str) -> dict:
    return speedup.variant_config(given(["--problem", "digits", *CONV, "--layers", "16", "--batch-size", "8",
                                         *flags]), speedup.VARIANTS["mgrit-exact"])


def test_exact_mgrit_is_replayed_for_the_measured_iterations_of_each_solve():
    """The profile's [forward, adjoint] iterations: one forward iteration more adds the same
    forward steps each time and no adjoint step; one adjoint iteration more adds vjps only."""
    cfg = exact_mgrit("--mgrit-tol", "1e-300")

    def counts(iterations):
        events = speedup.replay_step(cfg, 2, COSTS, FREE, iterations=iterations)["events"]
        kinds = [e[0] for ev in events for e in ev]
        return kinds.count("forward"), kinds.count("vjp")

    (f2, v2), (f3, v3), (f4, v4), (f3b, v3b) = counts([2, 2]), counts([3, 2]), counts([4, 2]), counts([3, 3])
    assert f4 - f3 == f3 - f2 > 0 and v2 == v3 == v4
    assert f3b == f3 and v3b > v3


def test_time_outside_the_spans_is_charged_per_span():
    """With every kind free but the time outside spans, a step of exact MGRIT on one rank
    costs that time × its compute spans (its norms, levels and warm starts between them)."""
    outside = 3e-5
    free = {**dict.fromkeys(COSTS, 0.0), "outside": outside}
    r = speedup.replay_step(exact_mgrit(), 1, free, FREE, iterations=[3, 2])
    spans = sum(1 for ev in r["events"] for e in ev if e[0] in COMPUTE)
    assert spans > 100
    assert r["step"] == pytest.approx(outside * spans, rel=1e-9)
    charged = speedup.replay_step(exact_mgrit(), 1, COSTS, FREE, iterations=[3, 2])["step"]
    both = speedup.replay_step(exact_mgrit(), 1, {**COSTS, "outside": outside}, FREE, iterations=[3, 2])["step"]
    assert both == pytest.approx(charged + outside * spans, rel=1e-9)


def test_neighbours_slow_every_kind_from_two_ranks_on():
    costs = {"forward": 1.0, "vjp": 2.0, "outside": 0.5}
    beside = {"forward": 1.5, "vjp": 1.1, "head": 1.2}
    assert speedup.stretched(costs, 1, 2, beside) == costs
    assert speedup.stretched(costs, 2, 2, beside) == pytest.approx({"forward": 1.5, "vjp": 2.2, "outside": 0.6})
    # oversubscribed: P / cores on top
    assert speedup.stretched(costs, 4, 2, beside) == pytest.approx({"forward": 3.0, "vjp": 4.4, "outside": 1.2})


def test_profile_measures_exact_mgrits_iterations_as_the_solver_records_them():
    """The profile's iterations are the real solves' (len(residual) - 1 each, the median
    over its steps), and its time outside spans is what the spans leave of the steps."""
    from ocnet.runs.config import resolve
    flags = ["--problem", "digits", "--net", "conv", "--channels", "4", "--layers", "8", "--batch-size", "8",
             "--solver", "mgrit", "--mgrit-mode", "exact", "--mgrit-tol", "1e-4"]
    p = calibrate.profile(resolve(flags), steps=2)
    assert p is not None
    forward, adjoint = p["iterations"]
    assert 1 <= forward <= 30 and 1 <= adjoint <= 30
    assert 0 < p["coverage"] <= 1 and p["outside"] >= 0 and p["spans"] > 0
    loose = calibrate.profile(resolve([*flags[:-1], "1e-1"]), steps=2)
    assert loose is not None and loose["iterations"][0] < forward  # a looser tolerance: fewer iterations


def test_a_variant_is_charged_its_own_steps_costs_at_their_batch():
    """The profile times each kind inside the variant's real steps, per layer step (the head
    per span), at the batch of one span (a micro-batch's); the replay charges those at that
    batch, and the calibrated costs scaled to any other batch."""
    from ocnet.runs.config import resolve
    flags = ["--problem", "digits", "--net", "conv", "--channels", "4", "--layers", "8", "--batch-size", "8",
             "--micro-batches", "2"]
    p = calibrate.profile(resolve(flags), steps=2)
    assert p is not None and p["batch"] == 4
    assert {"forward_graph", "backward", "head", "update"} <= p["costs"].keys()
    assert all(v > 0 for v in p["costs"].values())
    calibration = {**CALIBRATION, "profiles": {"serial": p}}
    own = speedup._costs(calibration, 4, "serial")
    assert own["backward"] == p["costs"]["backward"] and own["outside"] == p["outside"]
    assert own["vjp"] == COSTS["vjp"] * 4 / 16  # a kind its steps never ran: calibrated
    other = speedup._costs(calibration, 8, "serial")
    assert other["backward"] == COSTS["backward"] * 8 / 16


def test_profiles_take_their_steps_in_rounds_and_report_medians(monkeypatch):
    """Variants' steps alternate (a load that comes and goes falls on all alike), and each
    figure is the median over the steps, so one disturbed step does not move it."""
    from ocnet.runs.config import resolve
    flags = ["--problem", "digits", "--net", "conv", "--channels", "4", "--layers", "2", "--batch-size", "8"]
    order = []
    step = calibrate._Profile.step
    monkeypatch.setattr(calibrate._Profile, "step", lambda self: (order.append(self.config["solver"]), step(self)))
    got = calibrate.profile_all({"a": resolve(flags), "b": resolve([*flags, "--solver", "penalty"]),
                                 "none": resolve([*flags, "--solver", "local", "--local-overlap", "1"])}, steps=3)
    assert order == ["serial", "penalty"] * 3 and got["none"] is None
    assert got["a"] is not None and got["b"] is not None

    p = object.__new__(calibrate._Profile)
    p.config = resolve(flags)
    p.taken = [{"total": t, "covered": c, "spans": 2, "seconds": {"forward": f}, "layer_steps": {"forward": 2},
                "iterations": None} for t, c, f in ((1.0, 0.8, 0.8), (9.0, 4.0, 4.0), (1.2, 1.0, 1.0))]
    r = p.result()
    assert r["costs"]["forward"] == 0.5  # the median of 0.4, 2.0 and 0.5 s per layer step
    assert r["outside"] == pytest.approx(0.1) and r["coverage"] == pytest.approx(0.8)


def test_the_median_of_calibrations_takes_each_figure_from_the_middle_one():
    slow = {"compute": {"16": {"forward": 3.0}}, "profiles": {"serial": {"iterations": [4, 9], "outside": 0.9},
                                                               "local-1": None},
            "malloc": "tuned", "link": {"measured": False, "latency": 1e-5}}
    quiet = {"compute": {"16": {"forward": 1.0}}, "profiles": {"serial": {"iterations": [2, 3], "outside": 0.1},
                                                                "local-1": None},
             "malloc": "tuned", "link": {"measured": False, "latency": 3e-5}}
    mid = {"compute": {"16": {"forward": 1.2}}, "profiles": {"serial": {"iterations": [3, 3], "outside": 0.2},
                                                              "local-1": None},
           "malloc": "tuned", "link": {"measured": False, "latency": 2e-5}}
    got = calibrate.median([slow, quiet, mid])
    assert got == {"compute": {"16": {"forward": 1.2}}, "profiles": {"serial": {"iterations": [3, 3], "outside": 0.2},
                                                                      "local-1": None},
                   "malloc": "tuned", "link": {"measured": False, "latency": 2e-5}}
    assert calibrate.median([slow, quiet])["profiles"]["serial"]["iterations"] == [2, 3]  # measured counts
    with pytest.raises(ValueError, match="no calibration"):
        calibrate.median([])


def test_a_variant_without_a_one_rank_profile_takes_its_solvers_other_variants():
    # local parallelism with an overlap has no partition on one rank, so no profile of its own:
    # it is charged the costs local parallelism's steps took without the overlap
    kin = {"costs": {"backward": 7e-4, "forward_graph": 3e-4}, "outside": 5e-5, "batch": 16}
    calibration = {**CALIBRATION, "profiles": {"local-0": kin, "local-1": None, "penalty": {**kin, "outside": 1.0}}}
    got = speedup._costs(calibration, 16, "local-1")
    assert got["backward"] == 7e-4 and got["forward_graph"] == 3e-4 and got["outside"] == 5e-5
    assert speedup._costs({**CALIBRATION, "profiles": {"local-1": None}}, 16, "local-1")["outside"] == 0.0

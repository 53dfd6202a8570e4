"""Every command the documentation shows is either run here — training commands as smoke
runs of two steps, on the ranks they name — or listed below with the test that runs it or
the reason it is not run (it needs data, or it is a benchmark or the set-up itself)."""
import re
import sys
from pathlib import Path

import pytest

from ocnet.runs import launcher

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("mpirun ", "mpiexec ", "python ", "make ", "pip ", "OCNET_", ".venv/", "PATH=", "GLIBC_")

#: Commands not run by this file: where they are run, or why not.
ELSEWHERE = {
    "make run": "the set-up; `make test` (CI) runs the same set-up, test_run.py the default run on 8 ranks",
    "make test": "CI's own command",
    "make test-fast": "a subset of `make test` (CI)",
    "make check-configs": "CI runs it after `make test` (.ci/run)",
    "make check-gpu": "needs CUDA; without it, it says so and exits 0",
    "make docs": "tests/test_docs.py builds the site",
    'pip install -e ".[test]"': "the set-up of `make test`",
    "python -m pytest tests": "the suite itself",
    "OCNET_FAULT=step:1:hang:3 mpirun -n 4 python -m ocnet.run --stall-timeout 5":
        "tests/test_reliability.py::test_a_stuck_rank_ends_the_job_naming_it",
    "mpiexec -n 2 python -m ocnet.run --plugin mine.py --solver clipped --clip 0.5 --epochs 3":
        "tests/test_own_solver.py",
    "python -m ocnet.run --solver penalty --net conv --channels 8,16,32 --layers 9 --lr 0.01 --epochs 12 "
    "--schedule cosine --threads 1 --blocks 4 --seed S [options]": "a template; tests/test_penalty_mpi.py",
    "mpiexec -n 4 python tests/mpi/penalty_accuracy.py acc.json runs": "tests/test_penalty_mpi.py",
    "mpiexec -n 2 python own_loop.py out": "tests/test_own_loop.py, against the command line",
    "mpiexec -n 4 python -m ocnet.run --solver penalty|al --net conv --channels 8,16,32 --layers 9 --lr 0.01 "
    "--epochs 12 --schedule cosine --threads 1": "a template; tests/test_penalty_mpi.py",
    "python -m ocnet.speedup --config run.toml --calibration cal.json --layers 4096 --out pred/":
        "slow (9.5 min for 4096 layers on 2 cores); tests/test_speedup.py runs the CLI at 16 layers",
    "python -m ocnet.run --problem mnist1d --head convex": "the head's fit takes minutes after training; "
    "tests/test_convex_head.py runs --head convex",
    "mpirun -n 4 python -m ocnet.run --head convex --convex-patterns 16 --convex-beta 0.1":
        "the head's fit takes a minute after training; tests/test_convex_head.py runs --head convex",
    "python -m ocnet.run --problem mnist1d --head convex --convex-samples 1000":
        "the head's fit takes 20 s after training; tests/test_convex_head.py runs --head convex",
    "mpirun -n P python -m ocnet.run [--config FILE.toml] [--key value ...]": "a synopsis",
    "python -m ocnet.plot RUN_DIR [RUN_DIR ...] [--out DIR]": "a synopsis; tests/test_plot.py",
}
BENCHMARK = "benchmarks/"  # minutes each: `make bench`


PAGES = sorted((ROOT / "docs").glob("*.rst")) + [ROOT / "README.rst"]


def commands(pages: list[Path] = PAGES) -> list[str]:
    """The command lines of the literal blocks of ``pages`` (continuations joined, comments cut)."""
    out = []
    for path in pages:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            text = lines[i].strip().removeprefix("$ ")
            if lines[i].startswith(" ") and text.startswith(PROGRAMS):
                while text.endswith("\\") and i + 1 < len(lines):
                    i += 1
                    text = text[:-1].rstrip() + " " + lines[i].strip()
                out.append(re.sub(r"\s+#.*$", "", text).strip())
            i += 1
    return out


def runs(pages: list[Path] = PAGES) -> list[str]:
    """The commands of ``pages`` that this file runs."""
    return [c for c in commands(pages) if c not in ELSEWHERE and BENCHMARK not in c]


def test_every_command_is_run_or_accounted_for():
    shown = set(commands())
    assert set(ELSEWHERE) <= shown, set(ELSEWHERE) - shown  # no stale entries
    for c in runs():
        assert re.fullmatch(r"((mpirun|mpiexec) -n \d )?python -m ocnet\.(run|plot|perf\.calibrate)( \S+)*", c), \
            f"a command in the docs is neither run by tests/test_doc_commands.py nor listed there: {c}"


@pytest.mark.mpi
@pytest.mark.parametrize("page", [p for p in PAGES if runs([p])], ids=lambda p: p.name)
def test_the_docs_commands_run(tmp_path, page):
    """Page by page, in the order the page gives them (a plot reads the run directory made
    before it)."""
    if launcher.mpiexec() is None:
        pytest.skip("no mpiexec available")
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    (tmp_path / "run.toml").write_text('problem = "digits"\nlayers = 8\n')  # the docs' "run.toml"
    for c in runs([page]):
        args = c.split()
        n = int(args[2]) if args[0] in ("mpirun", "mpiexec") else 1
        args = args[args.index("-m") + 1:]
        if args[0] == "ocnet.run" and "--help" not in args:
            args += ["--max-steps", "2", "--quiet", "--timeline-steps", "0", "--plots", "none"]
        proc = launcher.launch(n, [sys.executable, "-m", *args], timeout=180, env=env, cwd=tmp_path)
        assert proc.returncode == 0, f"{c}\n{proc.stderr[-2000:]}"

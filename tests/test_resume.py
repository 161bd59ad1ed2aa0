"""Interruption and concurrency of ``python -m lrgd evaluate`` (issue 12).

A real subprocess is killed with SIGKILL in the middle of a run (no handler runs, a line may be half
written); running the same command again resumes and gives the summary of an uninterrupted run. Two
processes started together on one results folder leave no corrupt record line and agree with it too.

To make "the middle of a run" reliable, each subprocess gets a ``sitecustomize.py`` (in a temporary folder
on its PYTHONPATH) that slows :meth:`lrgd.rec.runner.Runner.evaluate_user` down by ``DELAY`` seconds; the
library itself has no test hook. The method is a reference ranker on a tiny synthetic dataset (no LLM).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import make_synthetic, write_synthetic
from lrgd.rec.records import append_record, read_records, seal
from lrgd.rec.runner import Runner

N_USERS = 12
DELAY = 0.25  # seconds added to every user in the subprocesses
SLOW = f"""
import time
import lrgd.rec.runner as runner

_original = runner.Runner.evaluate_user


def _slow(self, *args, **kwargs):
    time.sleep({DELAY})
    return _original(self, *args, **kwargs)


runner.Runner.evaluate_user = _slow
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """Data root, the slowing sitecustomize folder, and the summary of an uninterrupted in-process run."""
    tmp = tmp_path_factory.mktemp("resume")
    data = tmp / "data"
    ds = make_synthetic(n_users=30, n_items=50, seed=3, min_len=4, max_len=8)
    write_synthetic(ds, data / "amazon-games", "amazon-games")
    slow = tmp / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW)
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp / "clean", data_dir=data)
    clean = runner.run(cfg())
    return {"data": data, "slow": slow, "clean": clean}


def cfg() -> EvalConfig:
    return EvalConfig("amazon-games", "ref-markov", n_users=N_USERS, n_candidates=10)


def command(setup: dict, results: Path) -> list[str]:
    return [
        sys.executable, "-m", "lrgd", "evaluate", "--dataset", "amazon-games", "--method", "ref-markov",
        "--users", str(N_USERS), "--candidates", "10", "--data-dir", str(setup["data"]),
        "--results-dir", str(results), "--quiet",
    ]  # fmt: skip


def start(setup: dict, results: Path, slow: bool = True) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LRGD_DATA_DIR"}
    if slow:
        env["PYTHONPATH"] = os.pathsep.join([str(setup["slow"]), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        command(setup, results), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def record_lines(results: Path) -> int:
    files = list((results / "ci" / "partial" / "amazon-games").glob("*.jsonl"))
    return sum(f.read_text().count("\n") for f in files)


def summary_of(stdout: str) -> dict:
    return json.loads(Path(stdout.split("results: ")[1].strip()).read_text())


def same_result(a: dict, b: dict) -> None:
    """Everything but timing and provenance is identical."""
    for key in ("config", "method_params", "users", "n_users", "ranks", "metrics"):
        assert a[key] == b[key], key
    assert a["provenance"]["key"] == b["provenance"]["key"]


def read_back(setup: dict, results: Path):
    """The records on disk as the runner reads them, and what it skipped."""
    runner = Runner("ci", "cpu", quiet=True, results_root=results, data_dir=setup["data"])
    return runner.read(cfg())


def test_sigkill_mid_run_then_resume_gives_the_uninterrupted_summary(setup, tmp_path) -> None:
    results = tmp_path / "res"
    proc = start(setup, results)
    deadline = time.monotonic() + 60
    while record_lines(results) < 3:  # some users done, most not
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the subprocess wrote no records within 60 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = record_lines(results)
    assert 3 <= done < N_USERS, done  # killed in the middle
    assert not list((results / "ci" / "eval").rglob("*.json"))  # no summary from a killed run
    leftovers = [p for p in results.rglob("*") if p.is_file() and p.suffix not in (".json", ".jsonl")]
    assert leftovers == []  # no temporary file of an atomic write outlives it as a result

    resumed = start(setup, results, slow=False)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    summary = summary_of(out)
    assert summary["provenance"]["cached_users"] >= 3
    assert summary["provenance"]["computed_users"] == N_USERS - summary["provenance"]["cached_users"]
    same_result(summary, setup["clean"])


def test_a_torn_last_line_is_recomputed_on_resume(setup, tmp_path) -> None:
    """What a kill during a write leaves: half a line at the end. It is skipped, counted and recomputed."""
    results = tmp_path / "res"
    runner = Runner("ci", "cpu", quiet=True, results_root=results, data_dir=setup["data"])
    runner.run(cfg(), stop_after=5)
    (partial,) = (results / "ci" / "partial" / "amazon-games").glob("*.jsonl")
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    resumed = start(setup, results, slow=False)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert "skipped 1 record line(s): 1 torn" in err
    summary = summary_of(out)
    assert summary["provenance"]["computed_users"] == N_USERS - 4
    same_result(summary, setup["clean"])


def test_two_concurrent_runs_on_one_folder(setup, tmp_path) -> None:
    results = tmp_path / "res"
    procs = [start(setup, results), start(setup, results)]
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
    for out, _ in outs:
        same_result(summary_of(out), setup["clean"])
    (partial,) = (results / "ci" / "partial" / "amazon-games").glob("*.jsonl")
    for line in partial.read_text().splitlines():  # every line whole (flock'd appends never interleave)
        assert isinstance(json.loads(line), dict)
    done, skipped = read_back(setup, results)
    assert skipped.torn == skipped.foreign == skipped.tampered == skipped.invalid == 0, skipped
    assert len(done) == N_USERS
    assert Runner("ci", "cpu", quiet=True, results_root=results, data_dir=setup["data"]).records(cfg())


def test_a_user_computed_twice_is_kept_once(setup, tmp_path) -> None:
    """What two concurrent runs leave: the same record twice, differing only in its measured timings.
    It is one result (kept once, the duplicate counted), not a conflict that drops the user."""
    results = tmp_path / "res"
    runner = Runner("ci", "cpu", quiet=True, results_root=results, data_dir=setup["data"])
    runner.run(cfg(), stop_after=2)
    (partial,) = (results / "ci" / "partial" / "amazon-games").glob("*.jsonl")
    first = json.loads(partial.read_text().splitlines()[0])
    body = {k: v for k, v in first.items() if k not in ("key", "check")}
    again = seal({**body, "seconds": body["seconds"] + 1.0}, first["key"])
    with partial.open("a") as f:
        f.write(json.dumps(again) + "\n")
    done, skipped = read_back(setup, results)
    assert skipped.as_dict() == {"torn": 0, "foreign": 0, "tampered": 0, "invalid": 0, "duplicate": 1}
    assert done[first["user"]] == first and len(done) == 2
    changed = seal({**body, "rank": {"score": body["rank"]["score"] % 10 + 1}}, first["key"])
    with partial.open("a") as f:  # a different result for the same user: unknowable which is right
        f.write(json.dumps(changed) + "\n")
    done, skipped = read_back(setup, results)
    assert first["user"] not in done and skipped.duplicate == 3  # the harmless copy stayed in the file


def test_a_rewrite_keeps_a_record_appended_after_the_first_read(tmp_path, monkeypatch):
    """Two processes on one record file: reader A finds a torn line and rewrites the file; writer B
    appends a user between A's first read and A's rewrite. B's record must survive (the rewrite re-reads
    under the appenders' lock), and the torn line must go."""
    import lrgd.rec.records as records

    path = tmp_path / "r.jsonl"
    append_record(path, seal({"user": "u1", "rank": 1}, "k"))
    with open(path, "a") as f:
        f.write('{"user": "u2", "ra')  # a writer killed mid-line
    real = records.rewrite_locked

    def b_appends_first(p, rewrite):
        append_record(p, seal({"user": "u3", "rank": 2}, "k"))  # B, after A's first read
        return real(p, rewrite)

    monkeypatch.setattr(records, "rewrite_locked", b_appends_first)
    good, skipped = read_records(path, "k")
    assert set(good) == {"u1"} and skipped.torn == 1
    assert set(read_records(path, "k")[0]) == {"u1", "u3"}
    assert "u2" not in path.read_text()


def test_harmless_duplicates_do_not_rewrite_the_file(tmp_path):
    """Two runs that computed one user alike (timings aside) leave both lines: nothing to repair, and a
    rewrite would race with their appends."""
    path = tmp_path / "r.jsonl"
    for seconds in (1.0, 2.0):
        append_record(path, seal({"user": "u1", "rank": 1, "seconds": seconds}, "k"))
    before = path.stat().st_ino
    good, skipped = read_records(path, "k")
    assert set(good) == {"u1"} and skipped.duplicate == 1 and path.stat().st_ino == before

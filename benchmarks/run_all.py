"""Run every benchmark and record what it printed in ``benchmarks/results.json`` (``make bench``).

    .venv/bin/python benchmarks/run_all.py [--only bench_robust,bench_scoring] [--timeout 1200]

Each ``bench_*.py`` runs in its own process with the arguments of :data:`ARGS` (sized so that the whole
run takes minutes, not hours). For each script the record holds its printed lines, the headline (its
last line: every script prints its ratio last), the exit status, the wall time and the peak resident
memory of its process; the file also records the commit, the machine (cores, load average at the start)
and the time. Scripts that were not run keep their earlier record, so ``--only`` updates one row. The
book's benchmarks page renders this file. Run on an idle machine: other jobs on the same cores change
wall times by 2–5×.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from lrgd.results import read_json, write_json  # noqa: E402

RESULTS = HERE / "results.json"
#: the arguments each script runs with here (its own defaults otherwise)
ARGS = {
    "bench_effect.py": ["--small", "20", "--large", "40"],
    "bench_itemid.py": ["--epochs", "1"],
    "bench_reader.py": ["--steps", "40"],
}


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def _commit() -> str:
    """The commit the benchmarks ran at (``+dirty``: uncommitted changes in lrgd/ or a benchmark script)."""
    try:
        dirty = _git("status", "--porcelain", "--", "lrgd", "benchmarks/*.py")  # not results.json itself
        return _git("rev-parse", "--short=12", "HEAD") + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


#: runs a benchmark as ``__main__`` and reports its own peak resident memory on stderr when it exits
_WRAP = (
    "import resource, runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    print('@@maxrss', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
)


def run_one(script: Path, timeout: float) -> dict:
    """Run one benchmark; its lines, headline, status, wall seconds and peak RSS (MiB)."""
    t0 = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRAP, str(script), *ARGS.get(script.name, [])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
        status = proc.returncode
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        status = "timeout"
    rss = [int(ln.split()[1]) for ln in err.splitlines() if ln.startswith("@@maxrss ")]
    errors = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("@@maxrss ")]
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return {
        "args": ARGS.get(script.name, []),
        "lines": lines,
        "headline": lines[-1] if lines and status == 0 else (errors or [f"stopped: {status}"])[-1],
        "status": status,
        "seconds": round(time.time() - t0, 1),
        "peak_rss_mib": round(rss[-1] / 1024, 1) if rss else None,  # ru_maxrss is in KiB on Linux
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated script names (default: every bench_*.py)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per script before it is stopped")
    a = ap.parse_args(argv)
    scripts = sorted(HERE.glob("bench_*.py"))
    wanted = {n if n.endswith(".py") else n + ".py" for n in a.only.split(",") if n}
    unknown = wanted - {s.name for s in scripts}
    if unknown:
        print(f"error: --only names no benchmark: {sorted(unknown)}; choose from {[s.name for s in scripts]}")
        return 2
    old = read_json(RESULTS) if RESULTS.exists() else {"scripts": {}}
    records = dict(old.get("scripts", {}))
    for script in scripts:
        if wanted and script.name not in wanted:
            continue
        print(f"== {script.name} {' '.join(ARGS.get(script.name, []))}", flush=True)
        rec = run_one(script, a.timeout)
        rec |= {"commit": _commit(), "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average "
                           f"{os.getloadavg()[0]:.1f} at the end"}  # fmt: skip
        records[script.name] = rec
        print("\n".join(rec["lines"]) or rec["headline"])
        write_json(RESULTS, {"scripts": records})  # after every script: an interrupted run keeps the rest
    failed = [n for n, r in records.items() if r["status"] != 0]
    print(f"benchmarks recorded in {RESULTS.relative_to(ROOT)}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

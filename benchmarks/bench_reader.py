"""The reader (``trained:reader-anon``, chapter 2b): training tokens/s and evaluation users/s.

Trains the profile's anonymous reader for ``--steps`` steps on MovieLens-100k in a fresh temporary weight
cache (so the run neither reads nor touches yours), once per ``--threads`` value, then evaluates
``--users`` test users through the runner with ``--k`` `recent` demonstrations, counting the forward
passes of the transformer: scoring a user's candidates must cost exactly one. No target: the numbers
are reported, and recorded in benchmarks/README.md.

    python benchmarks/bench_reader.py [--steps 60] [--threads 1,2] [--users 200] [--k 16]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--k", type=int, default=16)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lrgd-bench-reader-") as tmp:
        os.environ["LRGD_CACHE"] = tmp  # read by lrgd.config.cache_dir at each call
        import torch

        from lrgd.models import reader
        from lrgd.rec.conditions import EvalConfig
        from lrgd.rec.runner import Runner

        runner = Runner(a.profile, "cpu", quiet=True, results_root=Path(tmp) / "results")
        name = "trained:reader-anon"
        cat = runner.catalogue("ml-100k", titles=False)
        print(f"reader · ml-100k · profile {a.profile} · torch {torch.__version__} · {os.cpu_count()} cores")
        for threads in (int(t) for t in a.threads.split(",")):
            sizes = replace(runner.reader_sizes(name), steps=a.steps, threads=threads, checkpoint_every=10**9)
            t = reader.train([cat], sizes, Path(tmp) / f"bench-{threads}.pt", desc=f"{threads} thread(s)")
            log = t.log
            print(f"training, {threads} thread(s): {log['tokens'] / log['seconds']:,.0f} tokens/s, "
                  f"{log['prompts'] / log['seconds']:,.1f} prompts/s ({a.steps} steps, batch {sizes.batch}, "
                  f"the first {min(a.steps, sizes.copy_warmup)} on the successor world)")  # fmt: skip
        runner._models[name] = t  # evaluate the last benchmark model through the runner
        runner.model_source = lambda _n: (t.path.name, "bench")  # no profile weights here
        calls = {"n": 0}
        t.model.body.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
        cfg = EvalConfig("ml-100k", "recent", a.k, n_users=a.users, model=name, guard="own")
        runner.candidates(cfg, runner.users(cfg))  # drawing candidates is not scoring
        t0 = time.perf_counter()
        runner.run(cfg)
        wall = time.perf_counter() - t0
    print(f"evaluation, k = {a.k}: {a.users / wall:,.1f} users/s (selection, scoring, records); "
          f"forward passes per user: {calls['n'] / a.users:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()

"""The item-id recommender (``ref-itemid``): training tokens/s and evaluation users/s, through the runner.

Trains the profile's model for ``--epochs`` epochs on one dataset in a fresh temporary weight cache
(so the run neither reads nor touches yours), then evaluates ``--users`` test users on chapter 2's
protocol (``--candidates`` candidates each: one forward pass per user, records written as in any run).
Training tokens are predicted positions (one per training transition); the epoch times include the
per-epoch validation ranking. No target: the numbers are reported, and recorded in benchmarks/README.md.

    python benchmarks/bench_itemid.py [--dataset ml-100k] [--epochs 2] [--users 200] [--threads 1]
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
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--profile", default="ci")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--users", type=int, default=200)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument(
        "--threads", type=int, default=None, help="torch threads while training (default: profile's)"
    )
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lrgd-bench-itemid-") as tmp:
        os.environ["LRGD_CACHE"] = tmp  # read by lrgd.config.cache_dir at each call
        import torch

        import lrgd.models.itemid  # noqa: F401  (registers ref-itemid)
        from lrgd.rec.conditions import EvalConfig
        from lrgd.rec.runner import Runner

        runner = Runner(a.profile, "cpu", quiet=True, results_root=Path(tmp) / "results")
        if a.threads is not None:
            runner.profile = replace(runner.profile, itemid=replace(runner.profile.itemid, threads=a.threads))
        cfg = EvalConfig(a.dataset, "ref-itemid", n_users=a.users, n_candidates=a.candidates,
                         params={"itemid_epochs": a.epochs})  # fmt: skip
        runner.data(a.dataset)  # loading the data is not training
        t0 = time.perf_counter()
        trained = runner.method(cfg).trained(runner, cfg)
        train_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = runner.run(cfg)
        eval_wall = time.perf_counter() - t0
    log, spec = trained.log, trained.spec
    tokens = log["tokens"] * len(log["loss"])
    print(
        f"ref-itemid · {a.dataset} · profile {a.profile} · torch {torch.__version__} · "
        f"{os.cpu_count()} cores · training threads {runner.profile.itemid.threads}"
    )
    print(f"model: hidden {spec.hidden}, layers {spec.layers}, heads {spec.heads}, max_len {spec.max_len}, "
          f"batch {spec.batch}, negatives {spec.negatives}")  # fmt: skip
    print(f"training: {len(log['loss'])} epochs, {tokens} predicted positions in {train_wall:.1f} s "
          f"(epochs {sum(log['seconds']):.1f} s) -> {tokens / sum(log['seconds']):.0f} tokens/s; "
          f"valid NDCG@10 by epoch {[round(x, 4) for x in log['valid_ndcg']]}")  # fmt: skip
    ndcg = res["metrics"]["score"]["NDCG@10"]["mean"]
    print(
        f"evaluation: {res['n_users']} users x {a.candidates} candidates in {eval_wall:.1f} s "
        f"-> {res['n_users'] / eval_wall:.1f} users/s (NDCG@10 {ndcg:.3f})"
    )
    speed, users = tokens / sum(log["seconds"]), res["n_users"] / eval_wall
    print(f"training tokens/s: {speed:.0f}; evaluation users/s: {users:.1f}")


if __name__ == "__main__":
    main()

"""The two-stage optimiser against brute force on testbed B (chapter 4): evaluations, wall time, quality.

Per user, stage 2 (guarded swaps from the stage-1 Effect_D top-k) evaluates a few hundred (validation
item, set) prompts; brute force evaluates every k-subset of the pool on the same train validation items,
C(M, k) · V/2 prompts. Reported over ``--users`` users of chapter 4's `ci` study: evaluations and wall
time of each, and how close stage 2 gets to the brute-force optimum of the same objective (mean train
validation rank loss) and on the held-out test item. The evaluation ratio is the last line printed.

    LRGD_CACHE=... .venv/bin/python benchmarks/bench_robust.py [--users 10] [--profile ci]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lrgd.config import get_profile
from lrgd.robust import optimise as opt
from lrgd.robust import testbed as rt
from lrgd.testbeds import tiny_decoder as td
from lrgd.testbeds.recworld import RecWorld


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--profile", default="ci")
    a = ap.parse_args()
    torch.set_num_threads(1)
    prof = get_profile(a.profile)
    r = prof.robust
    net = td.load_or_train(RecWorld.generate(prof.world, 0), prof.decoder, seed=0, device="cpu").model
    st = rt.build_study(net, rt.refit_world(prof.world, r, 0), r, seed=0, robust=False)
    obj = rt.TestbedObjective(net, st.valid, st.pool)
    first = opt.stage1(st.effect, r.k, "per_user")
    rows = []
    for i in range(min(a.users, st.n)):
        t0 = time.perf_counter()
        res = opt.refine(obj, first[i], st.train_rows(i), st.holdout_rows(i), max_iters=r.max_iters,
                         patience=r.patience, max_swaps=r.max_swaps, seed=0)  # fmt: skip
        t1 = time.perf_counter()
        best, j_best, n_brute = opt.brute_force(obj, st.train_rows(i), r.k)
        t2 = time.perf_counter()
        j_two = obj.set_loss(st.train_rows(i), np.repeat(res.best[None], len(st.train_rows(i)), 0)).mean()
        test = [rt.rank_loss(rt.scores(net, rt.rows(st.queries, np.array([i])), st.pool, s[None]))[0]
                for s in (res.best, best)]  # fmt: skip
        rows.append((res.n_evals, t1 - t0, n_brute, t2 - t1, j_two - j_best, *test))
    v = np.array(rows)
    half = r.n_valid_next // 2
    print(f"users {len(v)}, pool M = {st.pool.k}, k = {r.k}, train validation items per user {half}")
    print(f"stage 2: {v[:, 0].mean():.0f} evaluations and {v[:, 1].mean():.2f} s per user")
    print(f"brute force: {v[:, 2].mean():.0f} evaluations and {v[:, 3].mean():.2f} s per user")
    print(f"train-validation loss above the brute-force optimum: mean {v[:, 4].mean():.3f} (0 in "
          f"{int((v[:, 4] < 1e-9).sum())} of {len(v)} users)")  # fmt: skip
    worse = "worse" if v[:, 6].mean() > v[:, 5].mean() else "not worse"
    print(f"test rank loss: two-stage {v[:, 5].mean():.3f}, brute-force optimum {v[:, 6].mean():.3f} "
          f"(the validation optimum is {worse} on the test item)")  # fmt: skip
    print(f"wall-time ratio brute force / stage 2: {v[:, 3].sum() / v[:, 1].sum():.1f}x")
    print(f"evaluation ratio brute force / stage 2: {v[:, 2].sum() / v[:, 0].sum():.1f}x")


if __name__ == "__main__":
    main()

"""Chapter 4 §4.8: the two-stage optimiser on real data (the trained reader; **our reconstruction**).

:func:`optimiser_table` runs :mod:`lrgd.robust.runner_objective` on the profile's reader
(``prof.reader.models[0]``) and ``prof.robust.reader_dataset`` and scores, on the same test users:

* ``zero-shot``; ``random set`` (k pool demonstrations drawn with a seed, shared by every user);
  ``stage 1`` (the global top-k single-demonstration gains); ``two-stage`` (stage 2 with the collapse
  guard: early stopping and keep-best on the held-out validation users); ``two-stage, no guard``; and
  chapter 2's per-user ``recent`` selector at the same k as the reference.

Per method: NDCG@10 and HR@10 with bootstrap 95% CIs, the paired difference from zero-shot with a
sign-flip p (Holm-corrected over the methods), and popularity collapse — catalogue coverage@10 (share of
the dataset's titled items that enter some test user's top 10 of their candidates) and the Gini index of
how often each titled item is recommended in a top 10. The stage-2 curves (train-validation, held-out
validation and — for the figure only, never for choosing — test loss of each iteration's set) come
with it. The result is cached by configuration, data, weights and code (:func:`lrgd.results.cached_json`).
"""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import numpy as np

from lrgd.metrics import bootstrap_ci, coverage_at_k, gini, holm, paired_bootstrap, per_user_metrics
from lrgd.results import cached_json, code_hash, read_cached
from lrgd.robust import runner_objective as ro

METRICS = ("NDCG@10", "HR@10")
CODE = ("lrgd.robust.real", "lrgd.robust.runner_objective", "lrgd.robust.optimise", "lrgd.rec.runner",
        "lrgd.rec.select", "lrgd.rec.rank", "lrgd.models.reader", "lrgd.metrics")  # fmt: skip


def spec_for(prof, seed: int = 0) -> ro.OptimizeSpec:
    """The §4.8 optimisation of a profile: its reader, its reader dataset, its ``opt_*`` sizes."""
    r = prof.robust
    return ro.OptimizeSpec(
        r.reader_dataset, prof.reader.models[0], k=r.opt_k, n_pool=r.opt_pool,
        n_valid_users=r.opt_valid_users, n_test_users=r.opt_test_users, max_iters=r.opt_max_iters,
        max_moves=r.opt_max_moves, patience=r.opt_patience, guard="own", seed=seed,
    )  # fmt: skip


def _compute(runner, spec: ro.OptimizeSpec) -> dict:
    t0 = time.perf_counter()
    guarded = ro.optimize(runner, spec)
    state = {"sources": [list(s) for s in guarded.sources], "stage1": guarded.scores.tolist(),
             "stage1_passes": guarded.stage1_passes}  # fmt: skip
    free = ro.optimize(runner, replace(spec, collapse_guard=False), state, objective=guarded.objective)
    t_opt = time.perf_counter() - t0
    _, _, test_users = ro.split_users(runner, spec)
    test = ro.RunnerObjective(runner, spec, "test", test_users, guarded.sources)
    n = len(test_users)
    rng = np.random.default_rng([spec.seed, 77])
    sets = {
        "zero-shot": [],
        "random set": sorted(rng.choice(spec.n_pool, spec.k, replace=False).tolist()),
        "stage 1": guarded.start.tolist(),
        "two-stage": guarded.search.best.tolist(),
        "two-stage, no guard": free.search.best.tolist(),
    }
    shown = {name: [test.selection(u, ids) for u in range(n)] for name, ids in sets.items()}
    per = {name: ro.ranks_and_top10(test, sels) for name, sels in shown.items()}
    rcfg = spec.cfg("test", "recent", spec.k)
    recent = [runner.select(rcfg, u, runner.target(rcfg, u)[0]) for u in test_users]
    per[f"recent (per user, k={spec.k})"] = ro.ranks_and_top10(test, recent)
    curves = {}
    for name, res in (("two-stage", guarded), ("two-stage, no guard", free)):
        s = res.search
        users = np.arange(n)
        tl = [float(test.set_loss(users, np.tile(row, (n, 1))).mean()) for row in s.sets]
        curves[name] = {"train": s.train_loss.tolist(), "holdout": s.holdout_loss.tolist(), "test": tl,
                        "best_iter": s.best_iter, "stopped_by": s.stopped_by,
                        "evals": s.evals.tolist()}  # fmt: skip
    val, nv, nt = guarded.objective, len(guarded.train), len(guarded.holdout)
    empty = lambda obj, idx: float(obj.set_loss(idx, np.zeros((len(idx), 0), dtype=np.int64)).mean())  # noqa: E731
    zero = {"train": empty(val, np.arange(nv)), "holdout": empty(val, np.arange(nv, nv + nt)),
            "test": empty(test, np.arange(n))}  # fmt: skip
    titled = sorted(runner.data(spec.dataset).ds.titled_ids)
    return {
        "spec": asdict(spec), "sets": sets, "per_user": per, "curves": curves, "zero_shot_loss": zero,
        "titled": titled, "test_users": test_users, "valid_users": [*guarded.train, *guarded.holdout],
        "sources": [list(x) for x in guarded.sources],
        "cost": {"stage1_passes": guarded.stage1_passes, "passes_guarded": guarded.passes,
                 "passes_both": free.passes, "test_passes": test.passes, "guarded_demos": test.guarded,
                 "optimise_seconds": round(t_opt, 2), "seconds": round(time.perf_counter() - t0, 2)},
    }  # fmt: skip


def optimiser_run(runner, prof=None, seed: int = 0, compute: bool = True) -> tuple[dict | None, bool]:
    """(the raw §4.8 result, from cache?): sets, per-user ranks and top 10s, curves, costs; with
    ``compute=False`` nothing is computed and a missing or stale result is (None, False)."""
    prof = prof or runner.profile
    spec = spec_for(prof, seed)
    key = {"spec": asdict(spec), "data": runner.data(spec.dataset).fingerprint,
           "weights": runner.model_source(spec.model)[1], "code": code_hash(*CODE)}  # fmt: skip
    path = runner.root / "robust" / f"optimiser-real-{spec.dataset}-s{seed}.json"
    if not compute:
        found = read_cached(path, key)
        return found, found is not None
    return cached_json(path, key, lambda: _compute(runner, spec))


def optimiser_table(raw: dict, n_boot: int = 2000, seed: int = 0):
    """The table of :func:`optimiser_run`'s result: per method the metrics with CIs, Δ over zero-shot
    (CI, Holm-adjusted p), coverage@10 and Gini. Returns a DataFrame (rows in the methods' order)."""
    import pandas as pd

    per = raw["per_user"]
    vals = {m: per_user_metrics(p["ranks"]) for m, p in per.items()}
    zero = vals["zero-shot"]
    rows: dict = {}
    for metric in METRICS:
        ps = {}
        for m in per:
            mean, lo, hi = bootstrap_ci(vals[m][metric], n_boot=n_boot, seed=seed)
            rows.setdefault(m, {}).update({metric: mean, f"{metric} lo": lo, f"{metric} hi": hi})
            if m != "zero-shot":
                d = paired_bootstrap(vals[m][metric], zero[metric], n_boot=n_boot, seed=seed)
                rows[m].update({f"Δ{metric}": d["diff"], f"Δ{metric} lo": d["lo"], f"Δ{metric} hi": d["hi"]})
                ps[m] = d["p"]
        adj = holm(list(ps.values()))
        for m, p in zip(ps, adj, strict=True):
            rows[m][f"p Holm ({metric})"] = float(p)
    index = {i: j for j, i in enumerate(raw["titled"])}
    for m, p in per.items():
        counts = np.zeros(len(index))
        for top in p["top10"]:
            for i in top:
                counts[index[i]] += 1
        rows[m]["coverage@10"] = coverage_at_k(p["top10"], len(index), 10)
        rows[m]["Gini@10"] = gini(counts)
    return pd.DataFrame(rows).T

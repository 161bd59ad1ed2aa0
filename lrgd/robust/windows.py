"""Adapting over time on real data: the two-stage optimiser in calendar windows (chapter 4 §4.6b; **our
reconstruction**).

The paper claims the two-stage optimisation keeps "adapting over time". On a timestamped dataset
(MovieLens-100k; the Amazon sets have no timestamps) calendar time is cut into W windows and one global
demonstration set is chosen per window through the runner
(:class:`lrgd.robust.runner_objective.RunnerObjective`):

* **windows** (:func:`window_edges`): equal-*count* quantiles of the eligible users' test-item times, so
  every window has about the same number of test users. Equal spans would not: ML-100k's ratings come in
  bursts (most users rate everything within a day or two), so equal spans leave some windows nearly empty.
* **users** (:func:`assign_users`): a user belongs to the window of their *test* item. Per window, the first
  ``n_valid`` users (seeded validation order) whose *validation* item falls in the window are its
  validation users (first half: stage-2 training; second half: held-out, the collapse guard), and the
  first ``n_test`` users (seeded test order) whose test item falls in it are its test users. A user has one
  role in one window: test users are never validation users (of any window), nor demonstration sources.
* **pool** (:func:`draw_window_pool`): ``per_window`` training transitions (pool user, cut) whose next item
  was rated in each window, seeded, from users who are neither validation nor test users. A demonstration
  becomes *available* in its window and stays available later (pool ids are ordered by window).
* **sets**: **adaptive**: window 0 runs stage 1 (the single-demonstration gain of every available
  demonstration on window 0's training users, global top-k) and stage 2 (:func:`lrgd.robust.optimise.refine`
  with early stopping and keep-best); every later window re-runs stage 2 on its own validation users,
  warm-started from the previous window's set, over the demonstrations available by then. **static**: the
  window-0 set, kept. **random**: k demonstrations drawn (seeded) from those available in the window.
  **zero-shot**: none.
* **scores**: each window's test users, on their test item (the runner's ``test`` prompts), NDCG@10 and
  HR@10 per user; the cost is the validation prompts scored in each window (memo misses of the window's
  objective: stage 1 + stage 2 in window 0, stage 2 after).

``optimise.adapt`` keeps one candidate set for all eras; here the available demonstrations grow with the
windows, so :func:`run_windows` calls :func:`lrgd.robust.optimise.refine` per window itself (same warm start).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lrgd.errors import ConfigError, DataError
from lrgd.metrics import bootstrap_ci, paired_bootstrap, per_user_metrics
from lrgd.results import cached_json, code_hash, content_key, read_cached
from lrgd.robust import optimise as opt
from lrgd.robust import runner_objective as ro

METRICS = ("NDCG@10", "HR@10")
METHODS = ("adaptive", "static", "random", "zero-shot")
CODE = (
    "lrgd.robust.windows",
    "lrgd.robust.runner_objective",
    "lrgd.robust.optimise",
    "lrgd.models.reader",
    "lrgd.rec.runner",
    "lrgd.rec.select",
    "lrgd.rec.rank",
    "lrgd.metrics",
)


def require_timestamps(ds) -> dict[str, list[float]]:
    """``ds.timestamps``, or a one-line :class:`DataError` for a dataset without them."""
    if ds.timestamps is None:
        raise DataError(f"{ds.name} has no timestamps; adaptation over time runs on ml-100k only")
    return ds.timestamps


def window_edges(times: Sequence[float], n_windows: int) -> np.ndarray:
    """The W − 1 inner edges [W−1] of W equal-count windows of ``times`` [n] (quantiles)."""
    if not isinstance(n_windows, int) or n_windows < 1:
        raise ConfigError(f"robust.drift_windows must be an integer ≥ 1, got {n_windows!r}")
    return np.quantile(np.asarray(times, dtype=np.float64), np.linspace(0, 1, n_windows + 1)[1:-1])


def window_of(times, edges: np.ndarray) -> np.ndarray:
    """Window index of each time: window w holds [edge_{w−1}, edge_w) (the ends are open)."""
    return np.searchsorted(edges, np.asarray(times, dtype=np.float64), side="right")


@dataclass
class WindowUsers:
    """Window w's users: stage-2 ``train`` and ``holdout`` validation users, and ``test`` users."""

    train: list[str]
    holdout: list[str]
    test: list[str]


def assign_users(runner, dataset: str, edges: np.ndarray, n_valid: int, n_test: int, seed: int = 0):
    """Per window [W] its :class:`WindowUsers` (see the module docstring); roles never overlap."""
    st = runner.data(dataset)
    ts = require_timestamps(st.ds)
    n_win = len(edges) + 1
    valid_order = runner.eligible_users(dataset, "valid", seed)[0]
    test_order = runner.eligible_users(dataset, "test", seed)[0]
    vwin = dict(zip(valid_order, window_of([ts[u][-2] for u in valid_order], edges).tolist()))
    twin = dict(zip(test_order, window_of([ts[u][-1] for u in test_order], edges).tolist()))
    valid = [[u for u in valid_order if vwin[u] == w][:n_valid] for w in range(n_win)]
    taken = {u for v in valid for u in v}
    test = [[u for u in test_order if twin[u] == w and u not in taken][:n_test] for w in range(n_win)]
    out = []
    for w in range(n_win):
        if len(valid[w]) < 2 or not test[w]:
            raise ConfigError(
                f"{dataset}: window {w} has {len(valid[w])} validation and {len(test[w])} test users; "
                "lower robust.drift_windows or robust.drift_valid_users"
            )
        half = len(valid[w]) // 2
        out.append(WindowUsers(valid[w][:half], valid[w][half:], test[w]))
    return out


def draw_window_pool(pool, timestamps, edges: np.ndarray, per_window: int, seed: int, exclude=()):
    """``per_window`` seeded sources (pool user, cut) per window, by the time their next item was rated,
    none from ``exclude``. Returns (sources [M] ordered by window, window of each [M])."""
    excl = set(exclude)
    train = pool.split.train
    by_win: dict[int, list[tuple[str, int]]] = {}
    for u in sorted(train):
        if u in excl:
            continue
        cuts = np.arange(1, len(train[u]))
        for cut, w in zip(cuts.tolist(), window_of([timestamps[u][c] for c in cuts], edges).tolist()):
            by_win.setdefault(w, []).append((u, cut))
    sources, wins = [], []
    for w in range(len(edges) + 1):
        every, got = by_win.get(w, []), 0
        for j in np.random.default_rng([seed, 53, w]).permutation(len(every)):
            if got == per_window:
                break
            if pool.make(*every[j]) is not None:
                sources.append(every[j])
                wins.append(w)
                got += 1
        if got < per_window:
            raise ConfigError(
                f"{pool.ds.name}: window {w} has only {got} demonstrations outside the validation and test "
                f"users; lower robust.drift_pool (got {per_window}) or robust.drift_test_users"
            )
    return sources, np.array(wins, dtype=np.int64)


# ----------------------------------------------------------------------------- the study


def _check_sizes(R) -> None:
    ints = ("drift_windows", "drift_k", "drift_pool", "drift_valid_users", "drift_test_users",
            "drift_max_iters", "drift_max_moves", "drift_patience")  # fmt: skip
    low = {"drift_valid_users": 2, "drift_max_iters": 0}
    for name in ints:
        v = getattr(R, name)
        if not isinstance(v, int) or v < low.get(name, 1):
            raise ConfigError(f"robust.{name} must be an integer ≥ {low.get(name, 1)}, got {v!r}")
    if R.drift_k >= R.drift_pool:
        raise ConfigError(f"robust.drift_k={R.drift_k} must be smaller than robust.drift_pool={R.drift_pool}")


def _spec(R, model: str, seed: int) -> ro.OptimizeSpec:
    n_pool = R.drift_pool * R.drift_windows
    return ro.OptimizeSpec(R.drift_dataset, model, k=R.drift_k, n_pool=n_pool,
                           n_valid_users=R.drift_valid_users, n_test_users=R.drift_test_users,
                           max_iters=R.drift_max_iters,
                           max_moves=R.drift_max_moves, patience=R.drift_patience, seed=seed)  # fmt: skip


def _metrics(obj: ro.RunnerObjective, ids: Sequence[int]) -> dict[str, list[float]]:
    """Per test user of ``obj`` [n]: NDCG@10 and HR@10 with the pool ids ``ids`` (in order) shown."""
    ranks = ro.ranks_and_top10(obj, [obj.selection(u, ids) for u in range(len(obj.users))])["ranks"]
    per = per_user_metrics(ranks, METRICS)
    return {m: per[m].tolist() for m in METRICS}


def run_windows(runner, R, model: str, seed: int = 0, verbose: bool = False) -> dict:
    """The study of the module docstring with sizes ``R`` (the profile's ``.robust``) → a JSON-ready dict:
    ``windows`` (per window: time span, users, sets, passes, per-user metrics of each method)."""
    _check_sizes(R)
    spec = _spec(R, model, seed).validate()
    st = runner.data(R.drift_dataset)
    ts = require_timestamps(st.ds)
    test_order = runner.eligible_users(R.drift_dataset, "test", seed)[0]
    edges = window_edges([ts[u][-1] for u in test_order], R.drift_windows)
    users = assign_users(runner, R.drift_dataset, edges, R.drift_valid_users, R.drift_test_users, seed)
    every = [u for w in users for u in (*w.train, *w.holdout, *w.test)]
    sources, src_win = draw_window_pool(runner.pool(spec.cfg("valid")), ts, edges, R.drift_pool, seed, every)
    current, static, rows = None, None, []
    for w, wu in enumerate(users):
        avail = np.flatnonzero(src_win <= w)
        val = ro.RunnerObjective(runner, spec, "valid", [*wu.train, *wu.holdout], sources)
        tr, ho = np.arange(len(wu.train)), np.arange(len(wu.train), len(val.users))
        if current is None:
            current = avail[opt.stage1(ro.stage1_gain(val, tr, avail), R.drift_k, "global")]
        stage1_passes = val.passes
        search = opt.refine(val, current, tr, ho, candidates=avail, max_iters=R.drift_max_iters,
                            max_moves=R.drift_max_moves, patience=R.drift_patience, keep_best=True,
                            seed=seed + 1000 * w, verbose=verbose)  # fmt: skip
        current = search.best
        static = current if static is None else static
        rand = np.random.default_rng([seed, 59, w]).choice(avail, R.drift_k, replace=False)
        test = ro.RunnerObjective(runner, spec, "test", wu.test, sources)
        sets = {"adaptive": current, "static": static, "random": rand, "zero-shot": np.zeros(0, np.int64)}
        times = [ts[u][-1] for u in wu.test]
        rows.append({
            "window": w, "start": min(times), "end": max(times), "n_train": len(wu.train),
            "n_holdout": len(wu.holdout), "n_test": len(wu.test), "n_available": len(avail),
            "sets": {m: [int(i) for i in s] for m, s in sets.items()},
            "passes": val.passes, "stage1_passes": stage1_passes, "evals": search.n_evals,
            "stopped_by": search.stopped_by, "best_iter": search.best_iter,
            "test_users": wu.test, "metrics": {m: _metrics(test, s) for m, s in sets.items()},
        })  # fmt: skip
    return {"edges": edges.tolist(), "sources": [list(s) for s in sources], "source_window": src_win.tolist(),
            "windows": rows}  # fmt: skip


def timestamps_key(ds) -> str:
    """A hash of a dataset's timestamps (the data fingerprint does not cover them)."""
    return content_key([[u, ds.timestamps[u]] for u in sorted(ds.timestamps)])


def window_study(
    runner, R, model: str, seed: int = 0, verbose: bool = False, compute: bool = True
) -> tuple[dict | None, bool]:
    """:func:`run_windows`, cached under ``results/<profile>/robust/`` by the sizes, seed, data (sequences,
    titles and timestamps), the model's weights and the code. Returns (result, from_cache); with
    ``compute=False`` nothing is computed and a missing or stale result is (None, False)."""
    _check_sizes(R)
    st = runner.data(R.drift_dataset)
    require_timestamps(st.ds)
    sizes = {k: v for k, v in vars(R).items() if k.startswith("drift_")}
    parts = {"sizes": sizes, "model": model, "seed": seed, "data": st.fingerprint,
             "timestamps": timestamps_key(st.ds), "weights": runner.model_source(model)[1],
             "reader": repr(runner.reader_sizes(model)), "code": code_hash(*CODE)}  # fmt: skip
    path = runner.root / "robust" / f"windows-{R.drift_dataset}.json"
    if not compute:
        found = read_cached(path, parts)
        return found, found is not None
    return cached_json(path, parts, lambda: run_windows(runner, R, model, seed, verbose))


# ----------------------------------------------------------------------------- tables


def _day(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d")


def window_table(res: dict, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (window, method): test users, dates, and each metric's mean with its 95% CI."""
    rows = []
    for w in res["windows"]:
        for m in METHODS:
            row = {"window": w["window"], "dates": f"{_day(w['start'])} – {_day(w['end'])}",
                   "test users": w["n_test"], "method": m}  # fmt: skip
            for name in METRICS:
                mean, lo, hi = bootstrap_ci(w["metrics"][m][name], n_boot, seed)
                row.update({name: mean, f"{name} lo": lo, f"{name} hi": hi})
            rows.append(row)
    return pd.DataFrame(rows)


def paired_table(res: dict, a: str = "adaptive", b: str = "static", metric: str = "NDCG@10",
                 n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:  # fmt: skip
    """Per window: mean of ``a − b`` on the same test users, its 95% CI and the paired p."""
    rows = []
    for w in res["windows"]:
        d = paired_bootstrap(w["metrics"][a][metric], w["metrics"][b][metric], n_boot, seed)
        rows.append({"window": w["window"], f"Δ{metric}": d["diff"], "lo": d["lo"], "hi": d["hi"],
                     "p": d["p"], "same set": w["sets"][a] == w["sets"][b]})  # fmt: skip
    return pd.DataFrame(rows)


def cost_table(res: dict) -> pd.DataFrame:
    """Per window: validation prompts scored (adaptive; the static set pays window 0's only), the
    stage-2 evaluations, why the search stopped, and the demonstrations available."""
    rows = []
    for w in res["windows"]:
        first = w["window"] == 0
        rows.append({"window": w["window"], "available": w["n_available"],
                     "validation users": w["n_train"] + w["n_holdout"], "stage-1 passes": w["stage1_passes"],
                     "adaptive passes": w["passes"], "static passes": w["passes"] if first else 0,
                     "stage-2 evaluations": w["evals"], "stopped by": w["stopped_by"]})  # fmt: skip
    return pd.DataFrame(rows)

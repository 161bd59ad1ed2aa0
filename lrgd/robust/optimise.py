"""The two-stage demonstration optimiser, guarded against collapse, and adaptation over time.

The paper proposes "a two-stage optimisation" that improves demonstrations, "prevents performance
collapse" and keeps "adapting over time"; its algorithm is not available, so this is **our
reconstruction**, written against a small protocol so that testbed B, the reader and an LLM plug in:

* a *pool* of ``M`` candidate demonstrations, named by pool ids 0 … M−1;
* a :class:`SetObjective`: ``set_loss(users [n], sets [n, k]) → loss [n]`` (lower is better; e.g. the
  target's −log softmax over the candidate set, or −NDCG) — the only place a model runs in stage 2.

**Stage 1** (:func:`stage1`) takes first-order scores ``S [M, N]`` of every (demonstration, validation
user) pair — e.g. (robust) Effect_D, which costs O(M + N) model passes: M passes for the demonstrations,
N forward/backward passes for the users, then tensor products — and keeps the k best per user
(``per_user``) or by their mean over users (``global``). It calls no model. It assumes effects add, so it
cannot see redundancy (two near-duplicate demonstrations both score high).

**Stage 2** (:func:`refine`) is local search over one shared set on *train-validation* users: each
iteration evaluates every swap (the demonstration at one position replaced by a pool demonstration not in
the set; order is kept) and takes the best, or keeps a beam of the ``beam`` best sets. Objective:

    J(S) = mean_{u ∈ U_train} set_loss(u, S) + penalty(S).                                    (O1)

Guards against collapse (overfitting a small validation set):

* **early stopping**: the loss on a *held-out* validation split U_hold (other users; never the test users)
  is tracked after every iteration; the search stops after ``patience`` iterations without a new best;
* **keep-best**: the set returned is the one with the lowest held-out loss seen (iteration 0 included);
* **trust region**: a set may differ from the start set in at most ``max_swaps`` members, and/or must pass
  ``trust(sets) → bool`` (e.g. mean KL(p_S ‖ p_zero-shot) ≤ ε, :func:`lrgd.robust.perturb.kl_from_zero_shot`);
* **regulariser**: ``penalty(sets) → [c]`` in (O1), e.g. :func:`additive_penalty` of μ·step_D.

Per-user refinement is the same call with one user's validation items as the "users" of the objective.

**Resuming** (``python -m lrgd optimize``): :func:`refine` hands a JSON-ready state to ``on_iteration``
after scoring the start set and after every iteration, and continues from such a state (``state=``) to
the result of the uninterrupted run. Nothing else carries over between iterations: the swaps sampled by
``max_moves`` are drawn from ``default_rng([seed, 13, iteration])`` (before resumability they came from one
continued stream; no chapter uses ``max_moves`` with that stream, so no published number changed).

**Adaptation** (:func:`adapt`): in era e, stage 2 re-runs on era e's validation users warm-started from
era e−1's set; the static set is the one chosen in era 0. Both are scored on each era's test users.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from lrgd.errors import ConfigError
from lrgd.progress import progress

__all__ = [
    "AdaptResult",
    "Era",
    "SearchResult",
    "SetObjective",
    "adapt",
    "additive_penalty",
    "brute_force",
    "refine",
    "stage1",
    "two_stage",
]

SetFn = Callable[[np.ndarray], np.ndarray]  # sets [c, k] → [c]


class SetObjective(Protocol):
    """What the optimiser needs from a model: a pool size and a per-user loss of demonstration sets."""

    n_pool: int

    def set_loss(self, users: np.ndarray, sets: np.ndarray) -> np.ndarray:
        """users [n], sets [n, k] of pool ids → loss per user [n] (lower is better)."""
        ...


@dataclass
class SearchResult:
    """One stage-2 run. Row t of the per-iteration arrays is the state after iteration t (row 0: start)."""

    best: np.ndarray  # [k] the set returned (keep-best: lowest held-out loss; else the last set)
    start: np.ndarray  # [k] the start (stage-1) set
    sets: np.ndarray  # [T+1, k] the current best set of the beam after each iteration
    train_loss: np.ndarray  # [T+1] mean set_loss on the train-validation users
    objective: np.ndarray  # [T+1] train_loss + penalty, the quantity minimised (O1)
    holdout_loss: np.ndarray  # [T+1] mean set_loss on the held-out validation users
    evals: np.ndarray  # [T+1] cumulative (user, set) evaluations, i.e. model passes
    best_iter: int  # the row of ``best``
    stopped_by: str  # max_iters | converged | early_stop | no_moves | trust_region (no legal move
    #                  improves while the trust region excluded some: the search ended at its boundary)
    n_calls: int  # set_loss calls

    @property
    def n_evals(self) -> int:
        return int(self.evals[-1])


@dataclass(frozen=True)
class Era:
    """The users of one era: stage-2 train and held-out validation users, and test users (scored only)."""

    train: np.ndarray
    holdout: np.ndarray
    test: np.ndarray


@dataclass
class AdaptResult:
    """Re-optimised each era (warm start) vs chosen once in era 0; per-user test losses per era."""

    adaptive_sets: np.ndarray  # [E, k]
    static_set: np.ndarray  # [k]
    adaptive_test: list[np.ndarray]  # E arrays [n_test_e]
    static_test: list[np.ndarray]  # E arrays [n_test_e]
    evals: np.ndarray  # [E] stage-2 evaluations spent in each era (the static set spends era 0's only)
    searches: list[SearchResult]


# ----------------------------------------------------------------------------- stage 1


def stage1(scores: np.ndarray, k: int, mode: str = "global") -> np.ndarray:
    """The k best demonstrations by first-order score, best first (ties: lower pool id).

    scores: [M, N] (demonstration, validation user), higher is better.
    Returns [k] (``global``: by the mean over users) or [N, k] (``per_user``).
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or not np.isfinite(s).all():
        raise ConfigError(f"stage-1 scores must be a finite [M, N] matrix, got shape {s.shape}")
    if not 1 <= k <= s.shape[0]:
        raise ConfigError(f"k must be in [1, {s.shape[0]}] (the pool size), got {k}")
    if mode == "global":
        return np.argsort(-s.mean(1), kind="stable")[:k]
    if mode == "per_user":
        return np.argsort(-s, axis=0, kind="stable")[:k].T
    raise ConfigError(f"unknown stage-1 mode {mode!r}; choose global or per_user")


# ----------------------------------------------------------------------------- stage 2


def additive_penalty(per_demo: np.ndarray, weight: float) -> SetFn:
    """A regulariser for (O1): ``weight · Σ_{d ∈ S} per_demo[d]`` (e.g. μ and the dual step size)."""
    v = np.asarray(per_demo, dtype=np.float64)
    return lambda sets: weight * v[sets].sum(-1)


def _check_set(start: np.ndarray, n_pool: int) -> np.ndarray:
    s = np.asarray(start, dtype=np.int64)
    if s.ndim != 1 or len(s) < 1 or len(set(s.tolist())) != len(s):
        raise ConfigError(f"a demonstration set must be a 1-d array of distinct pool ids, got {s.tolist()}")
    if s.min() < 0 or s.max() >= n_pool:
        raise ConfigError(f"set ids must lie in [0, {n_pool}) (the pool size), got {s.tolist()}")
    return s


def _check_users(train: np.ndarray, holdout: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    train, holdout = np.asarray(train), np.asarray(holdout)
    if train.ndim != 1 or holdout.ndim != 1 or not len(train) or not len(holdout):
        raise ConfigError("train_users and holdout_users must be non-empty 1-d arrays of user ids")
    if np.isin(holdout, train).any():
        raise ConfigError("holdout_users overlap train_users: early stopping needs a separate split")
    return train, holdout


def _mean_loss(objective, users: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """Mean loss over ``users`` of each set: sets [c, k] → [c], in one set_loss call."""
    c, n = len(sets), len(users)
    loss = np.asarray(objective.set_loss(np.tile(users, c), np.repeat(sets, n, axis=0)), dtype=np.float64)
    if loss.shape != (c * n,):
        raise ConfigError(f"set_loss returned shape {loss.shape}; expected one loss per user ({c * n},)")
    return loss.reshape(c, n).mean(1)


def _swaps(current: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """Every set one swap away: position j's demonstration replaced by an allowed one not in the set."""
    outside = allowed[~np.isin(allowed, current)]
    k = len(current)
    sets = np.repeat(current[None], k * len(outside), axis=0)
    sets[np.arange(len(sets)), np.repeat(np.arange(k), len(outside))] = np.tile(outside, k)
    return sets


def refine(
    objective: SetObjective,
    start: np.ndarray,
    train_users: np.ndarray,
    holdout_users: np.ndarray,
    *,
    candidates: np.ndarray | None = None,
    max_iters: int = 20,
    patience: int | None = 2,
    keep_best: bool = True,
    max_swaps: int | None = None,
    trust: SetFn | None = None,
    penalty: SetFn | None = None,
    beam: int = 1,
    max_moves: int | None = None,
    tol: float = 0.0,
    seed: int = 0,
    verbose: bool = False,
    state: dict | None = None,
    on_iteration: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Stage 2: swap local search from ``start`` [k] minimising (O1), with the collapse guards.

    candidates: pool ids a swap may bring in (default: the whole pool). max_moves: evaluate at most this
    many swaps per iteration (a random subset seeded by (seed, iteration), so a resumed run draws the same
    subsets). A move must lower the best J by more than ``tol``; equally good moves go to the
    lexicographically smallest set, so a run is deterministic given ``seed``.
    No guards: ``patience=None, keep_best=False`` (and no max_swaps / trust / penalty).

    Resuming: ``on_iteration(state)`` is called with a JSON-ready dict after the start set is scored and
    after every iteration (``state["done"]`` once the search has ended); ``refine(..., state=that dict)``
    with the same arguments continues from it and returns what the uninterrupted run returns (the search
    keeps no other state: each iteration's randomness comes from (seed, iteration)).
    """
    start = _check_set(start, objective.n_pool)
    train, hold = _check_users(train_users, holdout_users)
    pool = np.arange(objective.n_pool) if candidates is None else _check_set(candidates, objective.n_pool)
    counts = {"beam": beam, "patience": patience, "max_moves": max_moves}
    bad = [f"{n}={v}" for n, v in counts.items() if v is not None and v < 1]
    bad += [f"max_iters={max_iters}"] if max_iters < 0 else []
    if bad:
        raise ConfigError(f"refine: beam, patience, max_moves ≥ 1 (None: off), max_iters ≥ 0; got {bad}")
    if max_swaps is not None and max_swaps < 0:
        raise ConfigError(f"refine: max_swaps must be None or ≥ 0, got {max_swaps}")
    pen = (lambda sets: np.zeros(len(sets))) if penalty is None else penalty

    def value(sets):  # (O1) for sets [c, k]: (train loss, J)
        loss = _mean_loss(objective, train, sets)
        return loss, loss + np.asarray(pen(sets), dtype=np.float64)

    if state is None:
        beam_loss, beam_j = value(start[None])
        held0 = _mean_loss(objective, hold, start[None])[0]
        st = _initial_state(start, beam_loss, beam_j, held0, len(train) + len(hold))
        if on_iteration is not None:
            on_iteration(_json_state(st))
    else:
        st = _resumed_state(state, start)
    first = st["iteration"]
    steps = range(first, max_iters)
    if verbose and not st["done"]:
        steps = progress(steps, "stage 2", total=max(0, max_iters - first))
    for it in () if st["done"] else steps:
        _iterate(st, it, objective, value, start, pool, train, hold, max_swaps, trust, max_moves, tol, beam,
                 patience, seed)  # fmt: skip
        if on_iteration is not None:
            on_iteration(_json_state(st))
        if st["done"]:
            break
    if not st["done"]:
        st["done"] = True
        if on_iteration is not None:
            on_iteration(_json_state(st))
    return _result(st, start, keep_best)


def _initial_state(start, beam_loss, beam_j, held0, evals) -> dict:
    """The search state after scoring the start set (row 0 of every per-iteration array)."""
    return {
        "iteration": 0, "done": False, "stopped_by": "max_iters", "calls": 2,
        "beam_sets": start[None].copy(), "beam_loss": beam_loss, "beam_j": beam_j,
        "rows": {"sets": [start.tolist()], "train": [float(beam_loss[0])], "J": [float(beam_j[0])],
                 "hold": [float(held0)], "evals": [int(evals)]},
        "best_iter": 0, "since_best": 0,
    }  # fmt: skip


def _json_state(st: dict) -> dict:
    """``st`` with arrays as lists (floats round-trip exactly through JSON)."""
    out = dict(st)
    for key in ("beam_sets", "beam_loss", "beam_j"):
        out[key] = np.asarray(st[key]).tolist()
    out["rows"] = {k: list(v) for k, v in st["rows"].items()}
    return out


def _resumed_state(state: dict, start: np.ndarray) -> dict:
    """A saved state back as arrays; :class:`ConfigError` when it does not belong to this start set."""
    try:
        st = dict(state)
        st["beam_sets"] = np.asarray(state["beam_sets"], dtype=np.int64)
        st["beam_loss"] = np.asarray(state["beam_loss"], dtype=np.float64)
        st["beam_j"] = np.asarray(state["beam_j"], dtype=np.float64)
        st["rows"] = {k: list(v) for k, v in state["rows"].items()}
        ok = st["rows"]["sets"][0] == start.tolist() and st["beam_sets"].shape[1] == len(start)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(f"refine: the saved state is not a stage-2 state ({exc}); start over") from exc
    if not ok:
        raise ConfigError("refine: the saved state belongs to another start set; start over")
    return st


def _iterate(st, it, objective, value, start, pool, train, hold, max_swaps, trust, max_moves, tol, beam,
             patience, seed) -> None:  # fmt: skip
    """One stage-2 iteration on the state ``st`` (in place): evaluate the swaps, move, track the guard."""
    rng = np.random.default_rng([seed, 13, it])
    beam_sets, beam_loss, beam_j = st["beam_sets"], st["beam_loss"], st["beam_j"]
    st["iteration"] = it + 1
    moves = np.unique(np.concatenate([_swaps(s, pool) for s in beam_sets]), axis=0)
    moves = moves[~(moves[:, None] == beam_sets[None]).all(-1).any(1)]  # not already in the beam
    at_edge = False
    if max_swaps is not None:
        inside = (~np.isin(moves, start)).sum(1) <= max_swaps
        at_edge, moves = not inside.all(), moves[inside]
    if trust is not None and len(moves):
        ok = np.asarray(trust(moves), dtype=bool)
        at_edge, moves = at_edge or not ok.all(), moves[ok]
    if max_moves is not None and len(moves) > max_moves:
        moves = moves[np.sort(rng.choice(len(moves), max_moves, replace=False))]
    if not len(moves):
        st["stopped_by"], st["done"] = ("trust_region" if at_edge else "no_moves"), True
        return
    loss, j = value(moves)
    rows = st["rows"]
    st["calls"] += 1
    evals = rows["evals"][-1] + len(moves) * len(train)
    if j.min() >= beam_j.min() - tol:
        st["stopped_by"], st["done"] = ("trust_region" if at_edge else "converged"), True
        return
    keep = np.argsort(np.concatenate([beam_j, j]), kind="stable")[:beam]  # old beam ∪ moves
    st["beam_sets"] = np.concatenate([beam_sets, moves])[keep]
    st["beam_loss"] = np.concatenate([beam_loss, loss])[keep]
    st["beam_j"] = np.concatenate([beam_j, j])[keep]
    held = _mean_loss(objective, hold, st["beam_sets"][:1])[0]
    st["calls"] += 1
    rows["sets"].append(st["beam_sets"][0].tolist())
    rows["train"].append(float(st["beam_loss"][0]))
    rows["J"].append(float(st["beam_j"][0]))
    rows["hold"].append(float(held))
    rows["evals"].append(int(evals + len(hold)))
    if held < rows["hold"][st["best_iter"]]:
        st["best_iter"], st["since_best"] = len(rows["hold"]) - 1, 0
    else:
        st["since_best"] += 1
        if patience is not None and st["since_best"] >= patience:
            st["stopped_by"], st["done"] = "early_stop", True


def _result(st: dict, start: np.ndarray, keep_best: bool) -> SearchResult:
    rows = st["rows"]
    sets = np.asarray(rows["sets"], dtype=np.int64)
    chosen = st["best_iter"] if keep_best else len(sets) - 1
    return SearchResult(
        best=sets[chosen],
        start=start,
        sets=sets,
        train_loss=np.array(rows["train"]),
        objective=np.array(rows["J"]),
        holdout_loss=np.array(rows["hold"]),
        evals=np.array(rows["evals"]),
        best_iter=chosen,
        stopped_by=st["stopped_by"],
        n_calls=st["calls"],
    )


def two_stage(
    objective: SetObjective,
    scores: np.ndarray,
    k: int,
    train_users: np.ndarray,
    holdout_users: np.ndarray,
    **refine_kw,
) -> SearchResult:
    """Stage 1 (global top-k of ``scores`` [M, N]) then stage 2 (:func:`refine`) from that set."""
    if np.asarray(scores).shape[0] != objective.n_pool:
        raise ConfigError(f"scores have {np.asarray(scores).shape[0]} rows; the pool has {objective.n_pool}")
    return refine(objective, stage1(scores, k, "global"), train_users, holdout_users, **refine_kw)


def brute_force(
    objective: SetObjective, users: np.ndarray, k: int, penalty: SetFn | None = None, max_sets: int = 100_000
) -> tuple[np.ndarray, float, int]:
    """The best unordered k-set of the pool on ``users`` by (O1): (set [k], J, evaluations spent)."""
    n_sets = math.comb(objective.n_pool, k)
    if not 1 <= k <= objective.n_pool or n_sets > max_sets:
        raise ConfigError(f"brute force over C({objective.n_pool}, {k}) = {n_sets} sets; limit {max_sets}")
    sets = np.array(list(itertools.combinations(range(objective.n_pool), k)), dtype=np.int64)
    j = _mean_loss(objective, np.asarray(users), sets)
    if penalty is not None:
        j = j + np.asarray(penalty(sets), dtype=np.float64)
    i = int(np.argmin(j))
    return sets[i], float(j[i]), len(sets) * len(users)


# ----------------------------------------------------------------------------- adaptation


def adapt(
    objectives: Sequence[SetObjective],
    eras: Sequence[Era],
    start: np.ndarray,
    verbose: bool = False,
    **refine_kw,
) -> AdaptResult:
    """Re-optimise each era warm-started from the last (adaptive) vs the era-0 set kept (static).

    Era e's stage 2 uses only its ``train``/``holdout`` users; its ``test`` users are scored, never used
    to choose. ``refine_kw`` go to :func:`refine` (the trust region is relative to each era's start).
    """
    if len(objectives) != len(eras) or not eras:
        raise ConfigError(f"adapt needs one objective per era, got {len(objectives)} and {len(eras)} eras")
    for e, era in enumerate(eras):
        if np.isin(era.test, np.concatenate([era.train, era.holdout])).any():
            raise ConfigError(f"era {e}: test users overlap the validation users; keep them apart")
    searches, current = [], np.asarray(start)
    steps = progress(range(len(eras)), "eras") if verbose else range(len(eras))
    for e in steps:
        searches.append(refine(objectives[e], current, eras[e].train, eras[e].holdout, **refine_kw))
        current = searches[-1].best
    adaptive = np.stack([s.best for s in searches])
    static = adaptive[0]

    def test_loss(e, s):
        users = np.asarray(eras[e].test)
        return np.asarray(objectives[e].set_loss(users, np.repeat(s[None], len(users), 0)), dtype=np.float64)

    return AdaptResult(
        adaptive_sets=adaptive,
        static_set=static,
        adaptive_test=[test_loss(e, s) for e, s in enumerate(adaptive)],
        static_test=[test_loss(e, static) for e in range(len(eras))],
        evals=np.array([s.n_evals for s in searches]),
        searches=searches,
    )

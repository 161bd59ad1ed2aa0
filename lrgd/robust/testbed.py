"""Chapter 4 on testbed B: robust selection and the two-stage optimiser where the truth is known.

Everything here is **our reconstruction** (the paper's formulas are not available). The set-up:

* the world of chapter 1b, refit for selection (:func:`refit_world`): every user has ``n_valid_next``
  validation next items drawn from their own taste (Eq. (B3) of :mod:`lrgd.testbeds.recworld`) and users
  differ within a group (``user_noise``); the items and groups are chapter 1b's, so its trained decoder
  reads the refit world;
* a shared pool of M demonstrations with noise kinds (:func:`noisy_pool`);
* selection per user from the first half of the validation items (*train*), the second half held out
  (early stopping, keep-best), the test target never seen;
* the loss of a set S for a user is the rank loss of the target, −log softmax over the candidate set of
  the decoder's scores with S in the prompt (:class:`TestbedObjective`).

Methods (:func:`choose`): random; Effect_D top-k (first order, rank loss, secant rate, on the train
validation items); robust Effect_D top-k (Eq. (R1) of :mod:`lrgd.robust.perturb`: mean − λ·std over R
perturbed copies of each demonstration); the two-stage optimiser (stage 1 = Effect_D top-k, stage 2 =
swaps on the train items with the collapse guards of :func:`lrgd.robust.optimise.refine`) and the same
without guards.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lrgd.config import RobustSizes, WorldConfig, results_dir
from lrgd.demos import effect as fx
from lrgd.demos import testbed_effect as tbe
from lrgd.errors import ConfigError
from lrgd.metrics import bootstrap_ci, coverage_at_k, gini, holm, paired_bootstrap
from lrgd.progress import progress
from lrgd.results import cached_json, code_hash, read_cached
from lrgd.robust import optimise as opt
from lrgd.robust import perturb as pt
from lrgd.testbeds import tiny_decoder as td
from lrgd.testbeds.recworld import Demos, PromptBatch, Queries, RecWorld, ranking_metrics


def refit_world(base: WorldConfig, sizes: RobustSizes, seed: int = 0, **overrides) -> RecWorld:
    """Chapter 1b's world with validation next items and user noise (``overrides``: e.g. ``drift``);
    raises if its items or groups differ from chapter 1b's (the decoder must read the same world)."""
    cfg = replace(base, n_valid_next=sizes.n_valid_next, user_noise=sizes.user_noise, **overrides)
    world, ref = RecWorld.generate(cfg, seed), RecWorld.generate(base, seed)
    for name in ("item_vecs", "item_bias", "group_prefs", "centres"):
        if not np.array_equal(getattr(world, name), getattr(ref, name)):
            raise ConfigError(
                f"the refit world's {name} differ from chapter 1b's; keep the world's shape fields"
            )
    return world


def information_table(world: RecWorld, n: int, seed: int = 0) -> pd.DataFrame:
    """What one item tells the observer about a user's group, in nats (mean, 95% CI over n users):
    the mutual information I(g; item) of a next item and of a history item, and the mean gain in
    log p(true group) from the first validation next item (given the history) and from the last history
    item (given the earlier ones) — chapter 3's legal validation target."""
    q = world.sample_queries(n, np.random.default_rng([seed, 49]))
    idx, lh = np.arange(n), q.history.shape[1]

    def post(h: np.ndarray) -> np.ndarray:  # log p(true group | history h) under the observer
        ll = world._loglik_groups(h, q.t0, False)
        return (ll - np.logaddexp.reduce(ll, axis=1, keepdims=True))[idx, q.group]

    gains = {
        "first validation next item (given the history)": world.validation_usefulness(q)[:, 0],
        "last history item (given the earlier ones)": post(q.history) - post(q.history[:, :-1]),
    }
    rows = {
        "I(group; one next item)": (world.item_group_information(lh, True), np.nan, np.nan),
        "I(group; one history item)": (world.item_group_information(0, False), np.nan, np.nan),
    }
    rows.update({f"gain in log p(group): {k}": bootstrap_ci(v, 1000, seed) for k, v in gains.items()})
    return pd.DataFrame(rows, index=["nats", "lo", "hi"]).T


def observer_table(net, world: RecWorld, n: int, k: int, kinds, seed: int = 0) -> pd.DataFrame:
    """NDCG@10 with k demonstrations all of one kind: the decoder, the observer with the training prior
    over kinds, and the observer that knows the tested condition (Eq. (B2) with the condition's kinds)."""
    q = world.sample_queries(n, np.random.default_rng([seed, 50]))
    out = {}
    for j, kind in enumerate(kinds):
        b = world.with_demos(q, k, kind, np.random.default_rng([seed, 51, j]))
        out[kind] = {
            "decoder": ranking_metrics(td.score_candidates(net, b))["NDCG@10"].mean(),
            "observer, training prior": ranking_metrics(world.bayes_scores(b))["NDCG@10"].mean(),
            "observer, tested condition": ranking_metrics(world.bayes_scores(b, kind_probs="condition"))[
                "NDCG@10"
            ].mean(),
        }
    return pd.DataFrame(out).T


def noisy_pool(world: RecWorld, sizes: RobustSizes, rng: np.random.Generator, t0: int = 0) -> Demos:
    """A shared pool [1, M] of demonstrations of uniformly drawn groups, of the kinds ``sizes.pool_kinds``
    (``same`` = a clean demonstration of its own group; the noise kinds as in the world)."""
    groups = rng.integers(world.config.n_groups, size=sizes.n_pool)
    d = world.sample_demos(groups, dict(sizes.pool_kinds), 1, rng, t0=t0)
    return Demos(d.kind.T, d.group.T, d.history.transpose(1, 0, 2), d.next_item.T, d.t0)


def rows(q: Queries, idx: np.ndarray) -> Queries:
    """The queries at ``idx`` (a view for batching)."""
    return replace(q, group=q.group[idx], pref=q.pref[idx], history=q.history[idx], target=q.target[idx],
                   candidates=q.candidates[idx], valid=q.valid[idx])  # fmt: skip


def stacked_validation(world: RecWorld, q: Queries, seed: int) -> Queries:
    """Every user's validation items as targets: [V · N] rows, row ``j · N + i`` = user i, item j."""
    parts = [
        world.validation_queries(q, j, np.random.default_rng([seed, 40, j])) for j in range(q.valid.shape[1])
    ]
    return Queries(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("group", "pref", "history",
                   "target", "candidates")), t0=q.t0)  # fmt: skip


def scores(net, q: Queries, pool: Demos, sets: np.ndarray, demos: Demos | None = None) -> np.ndarray:
    """The decoder's candidate scores [n, C] with the pool demonstrations ``sets`` [n, k] in each prompt
    (``demos``: already built — e.g. perturbed — demonstrations instead)."""
    d = tbe.select_demos(q, pool, sets) if demos is None else demos
    return td.score_candidates(net, PromptBatch(q, d))


def rank_loss(s: np.ndarray) -> np.ndarray:
    """−log softmax of column 0 (the target) over the candidates: [n, C] → [n]."""
    m = s.max(1, keepdims=True)
    return (np.log(np.exp(s - m).sum(1)) + m[:, 0]) - s[:, 0]


@dataclass
class TestbedObjective:
    """:class:`lrgd.robust.optimise.SetObjective` over the rows of ``queries``: the rank loss of a set."""

    net: object
    queries: Queries
    pool: Demos

    @property
    def n_pool(self) -> int:
        return self.pool.k

    def set_loss(self, users: np.ndarray, sets: np.ndarray) -> np.ndarray:
        return rank_loss(scores(self.net, rows(self.queries, users), self.pool, sets))


@dataclass
class CachedObjective(TestbedObjective):
    """:class:`TestbedObjective` that keeps each (row, set)'s candidate scores, so a trust region that
    looks at a move's scores and the loss of that move share one decoder pass."""

    cache: dict = field(default_factory=dict)

    def candidate_scores(self, users: np.ndarray, sets: np.ndarray) -> np.ndarray:
        """users [n], sets [n, k] → scores [n, C] (computed once per distinct (row, ordered set))."""
        keys = [(int(u), tuple(r)) for u, r in zip(np.asarray(users).tolist(), np.asarray(sets).tolist())]
        todo = list(dict.fromkeys(key for key in keys if key not in self.cache))
        if todo:
            at = np.array([u for u, _ in todo])
            sets_ = np.array([list(r) for _, r in todo], dtype=np.int64)
            for key, row in zip(todo, scores(self.net, rows(self.queries, at), self.pool, sets_)):
                self.cache[key] = row
        return np.stack([self.cache[key] for key in keys])

    def set_loss(self, users: np.ndarray, sets: np.ndarray) -> np.ndarray:
        return rank_loss(self.candidate_scores(users, sets))


@dataclass
class Study:
    """Users, their validation rows, the pool and the first-order scores of chapter 4's testbed part."""

    world: RecWorld
    net: object
    sizes: RobustSizes
    queries: Queries  # N test users
    valid: Queries  # V · N validation rows (row j · N + i)
    pool: Demos  # [1, M]
    effect: np.ndarray  # [M, N] Effect_D (rank loss, secant) averaged over the train validation items
    robust: np.ndarray  # [len(lams), M, N] Eq. (R1) for each λ
    seed: int
    noisy: np.ndarray  # [R, M, N] Effect_D of the R perturbed copies ([0, M, N] without ``robust``)
    step: np.ndarray  # [M, N] step_D of Eq. (R1): the demonstration share Z_D/Z (:func:`dual_share`)

    @property
    def n(self) -> int:
        return len(self.queries)

    def train_rows(self, i: int) -> np.ndarray:
        return _item_rows(self.n, range(self.sizes.n_valid_next // 2), i)

    def holdout_rows(self, i: int) -> np.ndarray:
        return _item_rows(self.n, range(self.sizes.n_valid_next // 2, self.sizes.n_valid_next), i)


def _item_rows(n: int, items: range, i: int) -> np.ndarray:
    """Rows of user ``i``'s validation ``items`` among the V · N stacked rows (row j · N + i)."""
    return np.asarray(items) * n + i


@torch.no_grad()
def dual_share(d_states: list, u_states: list) -> np.ndarray:
    """step_D of Eq. (R1) on this decoder: the demonstration's share of the attention mass,
    Z_D / (Z_Z + Z_D) — the secant rate η of :mod:`lrgd.demos.effect`, the size of D's dual step
    relative to the zero-shot one — averaged over layers, heads and the user's prompt positions.

    d_states: M :class:`~lrgd.demos.effect.DemoState`; u_states: n :class:`~lrgd.demos.effect.UserState`.
    Returns [M, n] in (0, 1). Example: a demonstration whose keys all score log Z_D = log Z_Z gets 0.5.
    """
    n_layers = len(u_states[0].q)
    out = np.zeros((len(d_states), len(u_states)))
    for li in range(n_layers):
        keys, _, mask = fx._stack_demos(d_states, li, u_states[0].q[0].dtype)  # [M, H_kv, n, d]
        n_kv = keys.shape[1]
        for j, us in enumerate(u_states):
            h, p, d = us.q[li].shape
            qg = us.q[li].reshape(n_kv, h // n_kv, p, d)
            sc = torch.einsum("hgpd,mhnd->mhgpn", qg, keys) * us.scaling[li]
            log_zd = torch.logsumexp(sc.masked_fill((~mask)[:, None, None, None, :], -math.inf), -1)
            eta = torch.sigmoid(log_zd - us.log_z[li].reshape(n_kv, h // n_kv, p))  # [M, H_kv, g, P]
            out[:, j] += eta.mean(dim=(1, 2, 3)).numpy() / n_layers
    return out


def build_study(
    net,
    world: RecWorld,
    sizes: RobustSizes,
    seed: int = 0,
    t0: int = 0,
    queries: Queries | None = None,
    robust: bool = True,
) -> Study:
    """Draw users (unless given) and the pool (seeded) and compute Effect_D and, with ``robust``, Eq. (R1)
    on the train validation items, and step_D (:func:`dual_share`): M·(R + 1) demonstration passes +
    (V/2)·N forward/backward passes (the users' states are computed once)."""
    rng = np.random.default_rng([seed, 41])
    q = world.sample_queries(sizes.n_users, rng, t0=t0) if queries is None else queries
    pool = noisy_pool(world, sizes, np.random.default_rng([seed, 47]), t0=t0)
    valid = stacked_validation(world, q, seed)
    width = world.config.demo_history_len + 3
    train = np.concatenate([_item_rows(len(q), range(sizes.n_valid_next // 2), i) for i in range(len(q))])
    users = tbe.slot_prompts(rows(valid, train), width, candidates=True)  # user-major: user 0's items first
    u_states = fx.user_states(net, users, loss="rank")

    def per_user(m: np.ndarray) -> np.ndarray:  # [M, N · V/2] → [M, N], the mean over the user's train items
        return m.reshape(m.shape[0], len(q), -1).mean(-1)

    def effects(p: Demos) -> np.ndarray:  # [M, N]
        return per_user(fx.effect_matrix(fx.demo_states(net, users, tbe.pool_tokens(p)), u_states).numpy())

    d_states = fx.demo_states(net, users, tbe.pool_tokens(pool))
    effect = per_user(fx.effect_matrix(d_states, u_states).numpy())
    step = per_user(dual_share(d_states, u_states))
    noisy, rob = np.zeros((0, pool.k, len(q))), np.zeros((0, pool.k, len(q)))
    if robust:
        copies = pt.perturbed_copies(pool, sizes.robust_perturbation, sizes.robust_rate, sizes.n_copies,
                                     seed=seed, n_items=world.config.n_items)  # fmt: skip
        noisy = np.stack([effects(c) for c in copies])
        rob = np.stack([pt.robust_score(noisy, lam=lam) for lam in sizes.lams])
    return Study(world, net, sizes, q, valid, pool, effect, rob, seed, noisy, step)


# ----------------------------------------------------------------------------- choosing sets


def _zero_valid(st: Study) -> np.ndarray:
    """Zero-shot candidate scores [V · N, C] of every validation row."""
    return scores(st.net, st.valid, st.pool, np.zeros((len(st.valid), 0), int))


#: where a KL trust region is centred: the zero-shot predictions, or the predictions with stage 2's
#: start (the stage-1 set), which bounds the step stage 2 takes
AROUND = ("zero-shot", "start")


def _kl_trust(obj: CachedObjective, train: np.ndarray, zero: np.ndarray, eps: float):
    """The KL trust region (Eq. (R2)) of one user's search: mean over the user's ``train`` rows of
    KL(p_S ‖ p_ref) ≤ eps; ``zero`` [len(train), C] the reference scores of those rows (zero-shot, or
    the start set's: :func:`_set_scores`)."""

    def scores_of(sets: np.ndarray) -> np.ndarray:  # [c, k] → [c, len(train), C], cached for the loss
        cand = obj.candidate_scores(np.tile(train, len(sets)), np.repeat(sets, len(train), 0))
        return cand.reshape(len(sets), len(train), -1)

    return pt.kl_trust_region(scores_of, zero, eps)


def _set_scores(obj: CachedObjective, train: np.ndarray, set_: np.ndarray) -> np.ndarray:
    """Candidate scores [len(train), C] of the validation rows ``train`` with one set [k] shown."""
    return obj.candidate_scores(train, np.repeat(set_[None], len(train), 0))


def refine_users(
    st: Study,
    start: np.ndarray,
    guarded: bool = True,
    users: np.ndarray | None = None,
    eps: float = math.inf,
    mu: float = 0.0,
    around: str = "zero-shot",
) -> list[opt.SearchResult]:
    """Stage 2 for each of ``users`` (default: all) from ``start`` [N, k]: swaps judged on the user's train
    validation items; ``guarded``: early stopping and keep-best on the held-out items, a trust region of
    ``max_swaps``; ``eps`` < ∞: only sets with mean KL(p_S ‖ p_ref) ≤ eps on the user's train items
    (Eq. (R2)), p_ref the zero-shot predictions or (``around="start"``) those with the user's start set;
    ``mu`` > 0: the penalty μ · Σ_{d ∈ S} step_D (the user's share, :func:`dual_share`) in (O1)."""
    if around not in AROUND:
        raise ConfigError(f"the trust region is centred on one of {', '.join(AROUND)}, not {around!r}")
    s = st.sizes
    kw = ({"patience": s.patience, "keep_best": True, "max_swaps": s.max_swaps} if guarded
          else {"patience": None, "keep_best": False})  # fmt: skip
    kw.update(max_iters=s.max_iters, seed=st.seed)
    users = np.arange(st.n) if users is None else np.asarray(users)
    zero = _zero_valid(st) if math.isfinite(eps) and around == "zero-shot" else None
    out = []
    for i in progress(users, "stage 2 per user"):
        obj, train = CachedObjective(st.net, st.valid, st.pool), st.train_rows(i)
        extra = {}
        if math.isfinite(eps):
            ref = zero[train] if around == "zero-shot" else _set_scores(obj, train, start[i])
            extra["trust"] = _kl_trust(obj, train, ref, eps)
        if mu:
            extra["penalty"] = opt.additive_penalty(st.step[:, i], mu)
        out.append(opt.refine(obj, start[i], train, st.holdout_rows(i), **kw, **extra))
    return out


def choose(st: Study) -> tuple[dict[str, np.ndarray], dict[str, list]]:
    """Each method's sets [N, k] and the stage-2 searches (for the collapse figure)."""
    k, m = st.sizes.k, st.pool.k
    rng = np.random.default_rng([st.seed, 42])
    first = opt.stage1(st.effect, k, "per_user")
    lam = list(st.sizes.lams).index(st.sizes.lam)
    searches = {"guarded": refine_users(st, first, True), "unguarded": refine_users(st, first, False)}
    sets = {
        "random": np.stack([rng.choice(m, k, replace=False) for _ in range(st.n)]),
        "Effect_D top-k (stage 1)": first,
        f"robust Effect_D top-k (λ = {st.sizes.lam:g})": opt.stage1(st.robust[lam], k, "per_user"),
        "two-stage (guarded)": np.stack([r.best for r in searches["guarded"]]),
        "two-stage (no guards)": np.stack([r.best for r in searches["unguarded"]]),
    }
    return sets, searches


# ----------------------------------------------------------------------------- measuring


def ndcg(st: Study, sets: np.ndarray | None, demos: Demos | None = None) -> np.ndarray:
    """Per-user NDCG@10 on the test target with ``sets`` (None: zero-shot) or prebuilt ``demos``."""
    if sets is None and demos is None:
        sets = np.zeros((st.n, 0), dtype=int)
    return ranking_metrics(scores(st.net, st.queries, st.pool, sets, demos))["NDCG@10"]


def method_table(st: Study, sets: dict[str, np.ndarray], n_boot: int = 1000) -> pd.DataFrame:
    """NDCG@10 (95% CI) per method, zero-shot first, and the paired difference from zero-shot with its CI,
    sign-flip permutation p and Holm over the table."""
    per = {"zero-shot": ndcg(st, None), **{name: ndcg(st, s) for name, s in sets.items()}}
    out = {}
    for name, v in per.items():
        mean, lo, hi = bootstrap_ci(v, n_boot, st.seed)
        row = {"NDCG@10": mean, "lo": lo, "hi": hi}
        if name != "zero-shot":
            d = paired_bootstrap(v, per["zero-shot"], n_boot, st.seed)
            row.update({"Δ vs zero-shot": d["diff"], "Δ lo": d["lo"], "Δ hi": d["hi"], "p": d["p"]})
        out[name] = row
    df = pd.DataFrame(out).T
    mask = df["p"].notna()
    df.loc[mask, "p (Holm)"] = holm(df.loc[mask, "p"].to_numpy(dtype=float))
    return df


def paired(st: Study, a: np.ndarray, b: np.ndarray, n_boot: int = 1000) -> dict[str, float]:
    """Paired NDCG@10 difference (CI, p) of the sets ``a`` minus ``b`` on the test users."""
    return paired_bootstrap(ndcg(st, a), ndcg(st, b), n_boot, st.seed)


def collapse_curves(st: Study, searches: list[opt.SearchResult]) -> pd.DataFrame:
    """Mean over users of the train-validation, held-out-validation and test rank loss of the set at each
    stage-2 iteration (searches that stopped early keep their last set)."""
    t = max(len(r.train_loss) for r in searches)
    sets = np.stack([np.concatenate([r.sets, np.repeat(r.sets[-1:], t - len(r.sets), 0)]) for r in searches])
    pad = lambda x: np.concatenate([x, np.repeat(x[-1:], t - len(x))])  # noqa: E731
    test = np.stack([rank_loss(scores(st.net, st.queries, st.pool, sets[:, j])) for j in range(t)], 1)
    return pd.DataFrame({
        "train validation": np.mean([pad(r.train_loss) for r in searches], 0),
        "held-out validation": np.mean([pad(r.holdout_loss) for r in searches], 0),
        "test": test.mean(0),
    })  # fmt: skip


def perturbation_curves(st: Study, sets: dict[str, np.ndarray], names, rates) -> pd.DataFrame:
    """NDCG@10 (mean, 95% CI) of each method's chosen demonstrations perturbed at test time, per
    perturbation and rate; the same draws for every method (paired)."""
    ctx = {"n_items": st.world.config.n_items}
    out = []
    for name in names:
        for rate in rates:
            for method, s in sets.items():
                rng = np.random.default_rng([st.seed, 43, list(names).index(name), int(rate * 1000)])
                d = pt.perturb(tbe.select_demos(st.queries, st.pool, s), name, float(rate), rng, **ctx)
                mean, lo, hi = bootstrap_ci(ndcg(st, None, d), 1000, st.seed)
                out.append({"perturbation": name, "rate": rate, "method": method, "NDCG@10": mean, "lo": lo,
                            "hi": hi})  # fmt: skip
    return pd.DataFrame(out)


def lam_tradeoff(st: Study) -> pd.DataFrame:
    """For each λ of Eq. (R1): NDCG@10 of its top-k sets with clean demonstrations and with the robust
    score's own perturbation at its rate (test-time draws shared across λ)."""
    s, out = st.sizes, []
    for j, lam in enumerate(s.lams):
        sets = opt.stage1(st.robust[j], s.k, "per_user")
        rng = np.random.default_rng([st.seed, 48])
        chosen = tbe.select_demos(st.queries, st.pool, sets)
        noisy = pt.perturb(chosen, s.robust_perturbation, s.robust_rate, rng, n_items=st.world.config.n_items)
        for cond, v in (
            ("clean", ndcg(st, sets)),
            (f"{s.robust_perturbation} at {s.robust_rate:g}", ndcg(st, None, noisy)),
        ):
            mean, lo, hi = bootstrap_ci(v, 1000, st.seed)
            out.append({"λ": lam, "demonstrations": cond, "NDCG@10": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(out)


def _test_scores(st: Study, sets: np.ndarray | None) -> np.ndarray:
    """Candidate scores [N, C] of the test users with ``sets`` [N, k] (None: zero-shot)."""
    return scores(st.net, st.queries, st.pool, np.zeros((st.n, 0), int) if sets is None else sets)


def popularity(candidates: np.ndarray, s: np.ndarray, n_items: int, k: int = 10) -> dict[str, float]:
    """Popularity collapse of one method: catalogue coverage@k (distinct items in the users' top-k over
    ``n_items``) and the Gini index of how often each catalogue item is in a top-k (zeros included).

    candidates: item ids [n, C]; s: scores [n, C] (higher first; ties: the lower column)."""
    top = np.take_along_axis(candidates, np.argsort(-s, axis=1, kind="stable")[:, :k], 1)
    return {f"coverage@{k}": coverage_at_k(top, n_items, k),
            f"Gini@{k}": gini(np.bincount(top.ravel(), minlength=n_items))}  # fmt: skip


def _summary(st: Study, s: np.ndarray, s0: np.ndarray, users: np.ndarray, sets=None) -> dict[str, float]:
    """One method on the test ``users``: scores ``s`` [N, C] against zero-shot ``s0`` — NDCG@10, its paired
    difference from zero-shot (95% CI, p), coverage@10, Gini@10, the mean KL(p ‖ p_zero-shot) (Eq. (R2))
    and, with ``sets`` [N, k], the mean step_D of the chosen demonstrations."""
    v, v0 = (ranking_metrics(x)["NDCG@10"][users] for x in (s, s0))
    d = paired_bootstrap(v, v0, 1000, st.seed)
    out = {"NDCG@10": v.mean(), "ΔNDCG@10": d["diff"], "Δ lo": d["lo"], "Δ hi": d["hi"], "p": d["p"]}
    out.update(popularity(st.queries.candidates[users], s[users], st.world.config.n_items))
    out["KL from zero-shot"] = float(pt.kl_from_zero_shot(s[users], s0[users]).mean())
    step = np.nan if sets is None or not sets.shape[1] else st.step[sets[users], users[:, None]].mean()
    return {**out, "mean step_D": step}


def popularity_table(st: Study, sets: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per method (zero-shot first): test NDCG@10 and Δ vs zero-shot, coverage@10, Gini@10, KL from
    zero-shot, mean step_D; last a reference row that ranks each user's candidates in a random order."""
    s0, users = _test_scores(st, None), np.arange(st.n)
    out = {"zero-shot": _summary(st, s0, s0, users)}
    out.update({name: _summary(st, _test_scores(st, x), s0, users, x) for name, x in sets.items()})
    noise = np.random.default_rng([st.seed, 52]).random(s0.shape)
    out["random ranking (reference)"] = _summary(st, noise, s0, users)
    return pd.DataFrame(out).T


def mu_tradeoff(st: Study, n_sweep: int, guarded: list[opt.SearchResult] | None = None) -> pd.DataFrame:
    """For each μ of Eq. (R1) (step_D = the share Z_D/Z, :func:`dual_share`): *stage 1* — the per-user
    top-k of the robust score at λ = ``sizes.lam`` on all test users — and *stage 2* — the guarded search
    from the Effect_D top-k with the penalty μ·Σ_{d ∈ S} step_D in (O1), on the first ``n_sweep`` test
    users (μ = 0: ``guarded``, the plain guarded searches whose first ``n_sweep`` are these users', if
    given). One row per (stage, μ): see :func:`_summary`."""
    s, s0, users = st.sizes, _test_scores(st, None), np.arange(n_sweep)
    first, out = opt.stage1(st.effect, s.k, "per_user"), []
    for mu in s.mus:
        top = opt.stage1(pt.robust_score(st.noisy, lam=s.lam, mu=mu, step=st.step), s.k, "per_user")
        row = _summary(st, _test_scores(st, top), s0, np.arange(st.n), top)
        out.append({"stage": f"stage 1: robust top-k (λ = {s.lam:g})", "μ": mu, **row})
        runs = guarded if (mu == 0 and guarded is not None) else refine_users(st, first, True, users, mu=mu)
        sets = first.copy()
        sets[users] = np.stack([r.best for r in runs[: len(users)]])
        row = _summary(st, _test_scores(st, sets), s0, users, sets)
        out.append({"stage": "stage 2: guarded, penalty μ·Σ step_D", "μ": mu, **row})
    return pd.DataFrame(out)


def trust_tradeoff(
    st: Study, n_sweep: int, unguarded: list[opt.SearchResult], around: str = "zero-shot"
) -> pd.DataFrame:
    """Stage 2 without the other guards (no early stopping, no keep-best, no ``max_swaps``) inside the KL
    trust region mean KL(p_S ‖ p_ref) ≤ ε on the user's train items, p_ref the zero-shot predictions or
    (``around="start"``) those with the user's stage-1 set, for ε in ``sizes.kl_eps`` and ε = ∞
    (``unguarded``: the unguarded searches, whose first ``n_sweep`` are these users'), on the first
    ``n_sweep`` test users; first a row for the start (stage 1). Per ε: :func:`_summary`, the mean
    train, held-out and test rank loss, the mean KL from p_ref on the train items and the share of users
    inside ε (around zero-shot, a search that starts outside ε may only move inside; with no improving
    move inside it keeps its start; around the start, every search starts inside)."""
    s0, users = _test_scores(st, None), np.arange(n_sweep)
    first = opt.stage1(st.effect, st.sizes.k, "per_user")
    if around == "zero-shot":
        ref = _zero_valid(st)[np.concatenate([st.train_rows(i) for i in users])]
    else:
        ref = _valid_scores(st, first, users, st.train_rows)[0]
    head = {"around": around}
    out = [{**head, "ε": "stage 1 (start)", "eps": np.nan, **_loss_row(st, first, users, ref, s0, math.inf)}]
    for eps in (*st.sizes.kl_eps, math.inf):
        if math.isinf(eps):
            runs = unguarded[: len(users)]
        else:
            runs = refine_users(st, first, False, users, eps, around=around)
        sets = first.copy()
        sets[users] = np.stack([r.best for r in runs])
        label = "∞ (unguarded)" if math.isinf(eps) else f"{eps:g}"
        out.append({**head, "ε": label, "eps": eps if math.isfinite(eps) else np.nan,
                    **_loss_row(st, sets, users, ref, s0, eps)})  # fmt: skip
    return pd.DataFrame(out)


def _valid_scores(st: Study, sets: np.ndarray, users: np.ndarray, rows_of) -> tuple[np.ndarray, np.ndarray]:
    """Scores [n · V/2, C] of ``users``' validation rows ``rows_of(i)`` with their ``sets`` [N, k], and
    those rows [n · V/2] (user-major)."""
    idx = np.stack([rows_of(i) for i in users])  # [n, V/2]
    sc = scores(st.net, rows(st.valid, idx.ravel()), st.pool, np.repeat(sets[users], idx.shape[1], 0))
    return sc, idx.ravel()


def _loss_row(st, sets, users, ref, s0, eps) -> dict[str, float]:
    """:func:`_summary` of ``sets`` [N, k] on ``users`` with the mean train / held-out / test rank loss, the
    mean KL from ``ref`` (the reference scores [n · V/2, C] of the users' train rows, user-major) on the
    train items and the share of users whose set lies inside ε (NaN for ε = ∞)."""
    s = _test_scores(st, sets)
    train, _ = _valid_scores(st, sets, users, st.train_rows)
    kl = pt.kl_from_zero_shot(train, ref).reshape(len(users), -1).mean(1)
    loss = {"train loss": rank_loss(train).mean(),
            "held-out loss": rank_loss(_valid_scores(st, sets, users, st.holdout_rows)[0]).mean(),
            "test loss": rank_loss(s[users]).mean(), "KL (train items)": kl.mean(),
            "inside ε": float((kl <= eps).mean()) if math.isfinite(eps) else np.nan}  # fmt: skip
    return {**_summary(st, s, s0, users, sets), **loss}


def pair_interactions(st: Study, n_users: int, n_pairs: int = 20) -> pd.DataFrame:
    """For random pairs (a, b) of pool demonstrations: the rank-loss gains g(a), g(b), g(a, b) over
    zero-shot on the test target, and the interaction g(a, b) − g(a) − g(b) [one row per (user, pair)]."""
    rng = np.random.default_rng([st.seed, 44])
    users = np.arange(min(n_users, st.n))
    q = rows(st.queries, np.repeat(users, n_pairs))
    pairs = np.stack([rng.choice(st.pool.k, 2, replace=False) for _ in range(len(q))])
    base = rank_loss(scores(st.net, q, st.pool, pairs[:, :0]))
    ga, gb = (base - rank_loss(scores(st.net, q, st.pool, pairs[:, [j]])) for j in (0, 1))
    gab = base - rank_loss(scores(st.net, q, st.pool, pairs))
    same = st.pool.group[0, pairs[:, 0]] == st.pool.group[0, pairs[:, 1]]
    own = st.pool.group[0][pairs] == q.group[:, None]
    return pd.DataFrame({"user": np.repeat(users, n_pairs), "g_a": ga, "g_b": gb, "g_ab": gab,
                         "interaction": gab - ga - gb, "same group": same,
                         "both own group": own.all(1)})  # fmt: skip


# ----------------------------------------------------------------------------- drift


def drift_study(net, base: WorldConfig, sizes: RobustSizes, seed: int = 0) -> pd.DataFrame:
    """Adaptation over calendar time: eras e = 0 … E−1 at t0 = e · era_gap in a drifting world. Each era
    brings a new pool and new users of the same groups (row i keeps its group); the *static* sets are the
    two-stage sets chosen in era 0, kept (with era 0's pool) for row i in every later era; the *adaptive*
    ones are chosen again in every era from that era's pool and validation items. Per era and method: test
    NDCG@10 (mean, 95% CI)."""
    world = refit_world(base, sizes, seed, drift=sizes.drift)
    groups = np.random.default_rng([seed, 45]).integers(world.config.n_groups, size=sizes.n_users)
    out, static = [], None
    for e in progress(range(sizes.eras), "eras"):
        t0 = e * sizes.era_gap
        q = world.sample_queries(sizes.n_users, np.random.default_rng([seed, 46, e]), group=groups, t0=t0)
        st = build_study(net, world, sizes, seed=seed + 1000 * e, t0=t0, queries=q, robust=False)
        adaptive = np.stack([r.best for r in refine_users(st, opt.stage1(st.effect, sizes.k, "per_user"))])
        if static is None:
            static = tbe.select_demos(q, st.pool, adaptive)
        kept = replace(static, t0=t0)  # era 0's demonstrations shown to era e's users
        for name, v in (("zero-shot", ndcg(st, None)), ("adaptive (re-chosen each era)", ndcg(st, adaptive)),
                        ("static (chosen in era 0)", ndcg(st, None, kept))):  # fmt: skip
            mean, lo, hi = bootstrap_ci(v, 1000, seed)
            out.append({"era": e, "t0": t0, "method": name, "NDCG@10": mean, "lo": lo, "hi": hi})
    return pd.DataFrame(out)


# ----------------------------------------------------------------------------- the chapter's tables, cached

#: the modules whose source computes the testbed tables: this module and what it imports, not the whole
#: ``lrgd.robust`` package (the real-data optimiser of §4.8 and the window study of §4.6b may change without
#: invalidating a stored run, which takes hours at ``full``)
CODE = ("lrgd.robust.testbed", "lrgd.robust.optimise", "lrgd.robust.perturb", "lrgd.demos.effect",
        "lrgd.demos.effect_rank", "lrgd.demos.testbed_effect", "lrgd.testbeds", "lrgd.metrics")  # fmt: skip
#: prefixes of the ``robust`` profile fields that other studies read (§4.6b ``drift_*``, §4.7 ``reader_*``,
#: §4.8 ``opt_*``): left out of the testbed tables' key
OTHER_STUDIES = ("drift_", "reader_", "opt_")


class _Tables:
    """The chapter's testbed tables (sections 4.1–4.6), each computed on demand; the world, the study and the
    chosen sets only when a table that needs them is still missing (so a resumed run skips them once the
    tables that read them are stored)."""

    KINDS = ("same", "other", "cluster", "flipped", "popular", "corrupted")

    def __init__(self, net, prof, seed: int):
        self.net, self.prof, self.r, self.seed = net, prof, prof.robust, seed

    @functools.cached_property
    def world(self) -> RecWorld:
        return refit_world(self.prof.world, self.r, self.seed)

    @functools.cached_property
    def variants(self):
        return tbe.effect_variants(self.net, self.world, self.r.variant_users, self.prof.effect.testbed_pool,
                                   self.seed)  # fmt: skip

    @functools.cached_property
    def study(self) -> Study:
        return build_study(self.net, self.world, self.r, self.seed)

    @functools.cached_property
    def chosen(self) -> tuple[dict[str, np.ndarray], dict[str, list]]:
        return choose(self.study)

    def comparisons(self) -> pd.DataFrame:
        st, (sets, _) = self.study, self.chosen
        robust = f"robust Effect_D top-k (λ = {self.r.lam:g})"
        pairs_of = {"guarded − unguarded": ("two-stage (guarded)", "two-stage (no guards)"),
                    "guarded − stage 1": ("two-stage (guarded)", "Effect_D top-k (stage 1)"),
                    "robust − plain Effect_D": (robust, "Effect_D top-k (stage 1)")}  # fmt: skip
        return pd.DataFrame({k: paired(st, sets[a], sets[b]) for k, (a, b) in pairs_of.items()}).T

    def sweep(self) -> int:  # the first users are those of the stage-2 μ and ε sweeps
        return min(self.r.sweep_users, self.study.n)

    def makers(self) -> dict[str, Callable[[], pd.DataFrame]]:
        """Table name → how to compute it, in the chapter's order."""
        r, seed = self.r, self.seed
        return {
            "info": lambda: information_table(self.world, r.n_users * 10, seed),
            "observer": lambda: observer_table(self.net, self.world, r.n_users * 5, 6, self.KINDS, seed),
            "variants": lambda: tbe.variants_table(self.variants, seed=seed).assign(
                source=self.variants.valid_source
            ),
            "pairs": lambda: pair_interactions(self.study, r.pair_users),
            "methods": lambda: method_table(self.study, self.chosen[0]),
            "collapse unguarded": lambda: collapse_curves(self.study, self.chosen[1]["unguarded"]),
            "collapse guarded": lambda: collapse_curves(self.study, self.chosen[1]["guarded"]),
            "comparisons": self.comparisons,
            "popularity": lambda: popularity_table(self.study, self.chosen[0]),
            "mu": lambda: mu_tradeoff(self.study, self.sweep(), self.chosen[1]["guarded"]),
            "trust": lambda: pd.concat(
                [trust_tradeoff(self.study, self.sweep(), self.chosen[1]["unguarded"], a) for a in AROUND],
                ignore_index=True,
            ),
            "perturbation": lambda: perturbation_curves(self.study, self.chosen[0], r.perturbations, r.rates),
            "lambda": lambda: lam_tradeoff(self.study),
            "drift": lambda: drift_study(self.net, self.prof.world, r, seed),
        }


def _records(df: pd.DataFrame) -> dict:
    """A frame as JSON records (NaN → null) and the names of its index columns (unnamed labels: "row")."""
    if isinstance(df.index, pd.RangeIndex):
        return {"index": None, "records": json.loads(df.to_json(orient="records"))}
    df = df.rename_axis([n or "row" for n in df.index.names])
    return {"index": list(df.index.names), "records": json.loads(df.reset_index().to_json(orient="records"))}


def _frame(blob: dict) -> pd.DataFrame:
    df = pd.DataFrame(blob["records"])
    return df.set_index(blob["index"]) if blob["index"] else df


def _tables_key(weights: str, prof, seed: int) -> dict:
    """What the tables depend on: the profile sections used (of ``robust``, the fields no other study owns:
    :data:`OTHER_STUDIES`), the seed, the decoder's weights hash and the code of :data:`CODE`."""
    robust = {k: v for k, v in asdict(prof.robust).items() if not k.startswith(OTHER_STUDIES)}
    return {"robust": robust, "world": asdict(prof.world), "decoder": asdict(prof.decoder),
            "effect": asdict(prof.effect), "seed": seed, "weights": weights,
            "code": code_hash(*CODE)}  # fmt: skip


def table_names(prof, seed: int = 0) -> list[str]:
    """The names of chapter 4's testbed tables, in the chapter's order (computes nothing)."""
    return list(_Tables(None, prof, seed).makers())


def _paths(profile: str) -> tuple[Path, Callable[[str], Path]]:
    """(the whole run's file, table name → its part file): an unfinished run keeps each table it has
    computed in ``testbed-tables.parts/``, one file each, keyed like the whole."""
    root = results_dir(profile) / "robust"
    return (
        root / "testbed-tables.json",
        lambda name: root / "testbed-tables.parts" / f"{name.replace(' ', '-')}.json",
    )


def chapter_tables(
    net, weights: str, prof, seed: int = 0, only: Collection[str] | None = None
) -> tuple[dict[str, pd.DataFrame], bool]:
    """Chapter 4's testbed tables and whether they came from the cache (``results/<profile>/robust/``),
    keyed by :func:`_tables_key`.

    Resumable: each table is stored as a part (same key, with its compute seconds) as soon as it is
    computed, so an interrupted run (the ``full`` one takes hours) continues with the missing tables.
    ``only`` (table names) computes just those, so that processes may share the tables out; the run that
    finds every part stored writes the whole and removes the parts. Until then it returns the tables
    stored so far."""
    key = _tables_key(weights, prof, seed)
    whole, part = _paths(prof.name)
    makers = _Tables(net, prof, seed).makers()
    unknown = sorted(set(only or ()) - set(makers))
    if unknown:
        raise ConfigError(f"unknown testbed table(s) {unknown}; the tables are {list(makers)}")
    blob = read_cached(whole, key)
    hit = blob is not None
    if not hit:
        todo = [name for name in makers if only is None or name in only]
        for name in progress(todo, "chapter 4 testbed tables", total=len(todo)):

            def make(name: str = name) -> dict:
                t0 = time.perf_counter()
                table = _records(makers[name]())
                return {"table": table, "seconds": round(time.perf_counter() - t0, 1)}

            cached_json(part(name), key, make)
        stored = {name: read_cached(part(name), key) for name in makers}
        if any(v is None for v in stored.values()):  # another process computes the rest
            return {n: _frame(v["table"]) for n, v in stored.items() if v is not None}, False
        blob, _ = cached_json(whole, key, lambda: {n: v["table"] for n, v in stored.items()})
    shutil.rmtree(part("").parent, ignore_errors=True)
    return {k: _frame(v) for k, v in blob.items()}, hit


def stored_tables(weights: str, prof, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The tables :func:`chapter_tables` has stored for ``prof`` under the current key, computing nothing:
    the whole run's, else those an unfinished run has stored so far (by name; :func:`table_names` lists
    them all), else none. E.g. the committed ``full`` run, read by a ``ci`` page."""
    key = _tables_key(weights, prof, seed)
    whole, part = _paths(prof.name)
    blob = read_cached(whole, key)
    if blob is None:
        found = {name: read_cached(part(name), key) for name in table_names(prof, seed)}
        blob = {name: v["table"] for name, v in found.items() if v is not None}
    return {k: _frame(v) for k, v in blob.items()}

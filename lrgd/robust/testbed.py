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

import json
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd

from lrgd.config import RobustSizes, WorldConfig, results_dir
from lrgd.demos import effect as fx
from lrgd.demos import testbed_effect as tbe
from lrgd.errors import ConfigError
from lrgd.metrics import bootstrap_ci, holm, paired_bootstrap
from lrgd.progress import progress
from lrgd.results import cached_json, code_hash
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


def _effects(net, users: list, pool: Demos) -> np.ndarray:
    """Effect_D [M, len(users)] of every pool demonstration (rank loss, secant)."""
    ids = tbe.pool_tokens(pool)
    d_states = fx.demo_states(net, users, ids)
    return fx.effect_matrix(d_states, fx.user_states(net, users, loss="rank")).numpy()


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
    on the train validation items: M·(R + 1) demonstration passes + (V/2)·N forward/backward passes."""
    rng = np.random.default_rng([seed, 41])
    q = world.sample_queries(sizes.n_users, rng, t0=t0) if queries is None else queries
    pool = noisy_pool(world, sizes, np.random.default_rng([seed, 47]), t0=t0)
    valid = stacked_validation(world, q, seed)
    width = world.config.demo_history_len + 3
    train = np.concatenate([_item_rows(len(q), range(sizes.n_valid_next // 2), i) for i in range(len(q))])
    users = tbe.slot_prompts(rows(valid, train), width, candidates=True)  # user-major: user 0's items first

    def effects(p: Demos) -> np.ndarray:  # [M, N], averaged over the user's train items
        return _effects(net, users, p).reshape(p.k, len(q), -1).mean(-1)

    effect, rob = effects(pool), np.zeros((0, pool.k, len(q)))
    if robust:
        copies = pt.perturbed_copies(pool, sizes.robust_perturbation, sizes.robust_rate, sizes.n_copies,
                                     seed=seed, n_items=world.config.n_items)  # fmt: skip
        noisy = np.stack([effects(c) for c in copies])
        rob = np.stack([pt.robust_score(noisy, lam=lam) for lam in sizes.lams])
    return Study(world, net, sizes, q, valid, pool, effect, rob, seed)


# ----------------------------------------------------------------------------- choosing sets


def refine_users(st: Study, start: np.ndarray, guarded: bool = True) -> list[opt.SearchResult]:
    """Stage 2 for every user from ``start`` [N, k]: swaps judged on the user's train validation items;
    ``guarded``: early stopping and keep-best on the held-out items, a trust region of ``max_swaps``."""
    obj, s = TestbedObjective(st.net, st.valid, st.pool), st.sizes
    kw = ({"patience": s.patience, "keep_best": True, "max_swaps": s.max_swaps} if guarded
          else {"patience": None, "keep_best": False})  # fmt: skip
    kw.update(max_iters=s.max_iters, seed=st.seed)
    return [opt.refine(obj, start[i], st.train_rows(i), st.holdout_rows(i), **kw)
            for i in progress(range(st.n), "stage 2 per user")]  # fmt: skip


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

#: modules whose source decides the chapter's testbed numbers (their hash enters the cache key)
CODE = ("lrgd.robust", "lrgd.demos.effect", "lrgd.demos.effect_rank", "lrgd.demos.testbed_effect",
        "lrgd.testbeds", "lrgd.metrics")  # fmt: skip


def _compute_tables(net, prof, seed: int) -> dict[str, pd.DataFrame]:
    """Every testbed table of chapter 4 (sections 4.1–4.6), computed."""
    r = prof.robust
    world = refit_world(prof.world, r, seed)
    t = {"info": information_table(world, r.n_users * 10, seed)}
    kinds = ("same", "other", "cluster", "flipped", "popular", "corrupted")
    t["observer"] = observer_table(net, world, r.n_users * 5, 6, kinds, seed)
    ev = tbe.effect_variants(net, world, r.variant_users, prof.effect.testbed_pool, seed)
    t["variants"] = tbe.variants_table(ev, seed=seed).assign(source=ev.valid_source)
    st = build_study(net, world, r, seed)
    t["pairs"] = pair_interactions(st, r.pair_users)
    sets, searches = choose(st)
    t["methods"] = method_table(st, sets)
    for g in ("unguarded", "guarded"):
        t[f"collapse {g}"] = collapse_curves(st, searches[g])
    robust = f"robust Effect_D top-k (λ = {r.lam:g})"
    pairs_of = {"guarded − unguarded": ("two-stage (guarded)", "two-stage (no guards)"),
                "guarded − stage 1": ("two-stage (guarded)", "Effect_D top-k (stage 1)"),
                "robust − plain Effect_D": (robust, "Effect_D top-k (stage 1)")}  # fmt: skip
    t["comparisons"] = pd.DataFrame({k: paired(st, sets[a], sets[b]) for k, (a, b) in pairs_of.items()}).T
    t["perturbation"] = perturbation_curves(st, sets, r.perturbations, r.rates)
    t["lambda"] = lam_tradeoff(st)
    t["drift"] = drift_study(net, prof.world, r, seed)
    return t


def _records(df: pd.DataFrame) -> dict:
    """A frame as JSON records (NaN → null) and the names of its index columns (unnamed labels: "row")."""
    if isinstance(df.index, pd.RangeIndex):
        return {"index": None, "records": json.loads(df.to_json(orient="records"))}
    df = df.rename_axis([n or "row" for n in df.index.names])
    return {"index": list(df.index.names), "records": json.loads(df.reset_index().to_json(orient="records"))}


def _frame(blob: dict) -> pd.DataFrame:
    df = pd.DataFrame(blob["records"])
    return df.set_index(blob["index"]) if blob["index"] else df


def chapter_tables(net, weights: str, prof, seed: int = 0) -> tuple[dict[str, pd.DataFrame], bool]:
    """Chapter 4's testbed tables and whether they came from the cache (``results/<profile>/robust/``),
    keyed by the profile sections used, the seed, the decoder's weights hash and the code of :data:`CODE`."""
    parts = {"robust": asdict(prof.robust), "world": asdict(prof.world), "decoder": asdict(prof.decoder),
             "effect": asdict(prof.effect), "seed": seed, "weights": weights,
             "code": code_hash(*CODE)}  # fmt: skip

    def make() -> dict:
        return {k: _records(v) for k, v in _compute_tables(net, prof, seed).items()}

    blob, hit = cached_json(results_dir(prof.name) / "robust" / "testbed-tables.json", parts, make)
    return {k: _frame(v) for k, v in blob.items()}, hit

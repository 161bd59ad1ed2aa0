"""Chapter 3 on testbed B (:mod:`lrgd.testbeds.recworld`): Effect_D where the truth is known (§3.3).

Adapters: a shared pool of demonstrations, each query as a prompt with one demonstration slot, and the
pool's demonstrations as token rows that fill the slot (they live here, not in the testbed, so the
testbed, a data source, depends on nothing above it). Study: Effect_D, the trained decoder's true gain and
the world's true usefulness for every (demonstration, query) pair (:func:`testbed_pairs`), and selection
of ``k`` demonstrations per query by each score (:func:`selection_table`). The sentences that read these
numbers are in :mod:`lrgd.demos.effect_report`.

Chapter 4 (§4.2, our reconstruction): the NLL and the ranking-aligned Effect_D, each with the secant and
the derivative rate, on the held-out item and on a legal validation item, against the decoder's true
gains in loss, rank and NDCG (:func:`effect_variants`, :func:`variants_table`; the machinery is in
:mod:`lrgd.demos.effect_rank`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from lrgd.demos import effect as fx
from lrgd.demos import effect_rank as fr
from lrgd.demos.effect import SlotPrompt
from lrgd.errors import ConfigError
from lrgd.metrics import bootstrap_ci
from lrgd.testbeds import tiny_decoder as td
from lrgd.testbeds.recworld import (
    ARROW,
    BOS,
    CORRUPTED,
    N_SPECIAL,
    OTHER,
    QUERY,
    SAME,
    SEP,
    Demos,
    PromptBatch,
    Queries,
    RecWorld,
    ranking_metrics,
)


def slot_prompts(
    queries: Queries, width: int, validation: bool = False, candidates: bool = False
) -> list[SlotPrompt]:
    """Each query as a :class:`SlotPrompt` with one demonstration slot of ``width`` tokens.

    Layout: BOS · [slot] · QUERY h… → · target, so a demonstration placed in the slot gives exactly
    the k = 1 prompt of :meth:`PromptBatch.tokens`. ``validation=True`` uses the history's last item
    as the target (and the history before it): a target that is not the held-out test item.
    ``candidates=True``: each prompt carries its query's candidate set (``queries.candidates``, as
    tokens) for the ranking loss; it belongs to ``queries.target``, so for another target build the
    queries with their own candidates first (:func:`validation_queries`).
    """
    if validation and candidates:
        raise ConfigError(
            "slot_prompts: the candidate set belongs to the test target; for a validation target with "
            "candidates use slot_prompts(validation_queries(world, queries), width, candidates=True)"
        )
    out = []
    for i, (h, t) in enumerate(zip(queries.history, queries.target)):
        if validation:
            h, t = h[:-1], h[-1]
        rest = np.concatenate([[QUERY], h + N_SPECIAL, [ARROW]])
        cands = torch.as_tensor(queries.candidates[i] + N_SPECIAL, dtype=torch.long) if candidates else None
        out.append(
            SlotPrompt(
                torch.tensor([BOS]),
                torch.as_tensor(rest, dtype=torch.long),
                torch.tensor([t + N_SPECIAL]),
                width,
                cands,
            )
        )
    return out


def validation_queries(world: RecWorld, queries: Queries, seed: int = 0) -> Queries:
    """The same users with a *validation* target in place of the held-out one, and its candidate set.

    The target is the user's first validation next item (``queries.valid[:, 0]``, drawn from the user's
    own taste) when the testbed provides one; otherwise the history's last item, with the history before
    it (chapter 3's validation step). Candidates: the validation target first, then uniform negatives
    among the other items (the rule of :meth:`RecWorld.sample_queries`), drawn from ``seed`` — never
    from the held-out item, which may appear among them by chance as any item may.
    """
    extra = {}
    if _has_valid(queries):
        history, target = queries.history, np.asarray(queries.valid)[:, 0]
        extra["valid"] = np.asarray(queries.valid)[:, :0]  # so the target's time is v_1's: t0 + Lh
    else:
        history, target = queries.history[:, :-1], queries.history[:, -1]
    cfg = world.config
    noise = np.random.default_rng([seed, 6]).random((len(target), cfg.n_items))
    noise[np.arange(len(target)), target] = np.inf
    negatives = np.argsort(noise, axis=1)[:, : cfg.n_candidates - 1]
    cands = np.concatenate([target[:, None], negatives], axis=1)
    return replace(queries, history=history, target=target, candidates=cands, **extra)


def _has_valid(queries: Queries) -> bool:
    """Whether the testbed gave these users at least one validation next item (``Queries.valid``)."""
    valid = getattr(queries, "valid", None)
    return valid is not None and np.ndim(valid) == 2 and np.shape(valid)[1] >= 1


def demo_pool(world: RecWorld, n: int, rng: np.random.Generator, corrupted: float = 0.2) -> Demos:
    """A shared pool of ``n`` demonstrations ([1, n]): real users of uniformly drawn groups, and a
    share ``corrupted`` of random-item sequences (group −1)."""
    cfg = world.config
    groups = rng.integers(cfg.n_groups, size=n)
    kinds = np.where(rng.random(n) < corrupted, CORRUPTED, SAME)
    d = world.sample_demos(groups, kinds[:, None], 1, rng)  # "same" as its own group
    return Demos(d.kind.T, d.group.T, d.history.transpose(1, 0, 2), d.next_item.T)


def pool_for(queries: Queries, pool: Demos) -> Demos:
    """The pool as every query's k = n demonstrations, with kinds relative to each query's group."""
    n, m = len(queries), pool.k
    group = np.broadcast_to(pool.group, (n, m))
    kind = np.where(group < 0, CORRUPTED, np.where(group == queries.group[:, None], SAME, OTHER))
    hist = np.broadcast_to(pool.history, (n, *pool.history.shape[1:]))
    nxt = np.broadcast_to(pool.next_item, (n, m))
    return Demos(kind, group.copy(), hist.copy(), nxt.copy(), pool.t0)


def pool_tokens(pool: Demos) -> list[torch.Tensor]:
    """Token ids of each pool demonstration as it sits in a prompt: h… → next SEP."""
    rows = np.concatenate(
        [
            pool.history[0] + N_SPECIAL,
            np.full((pool.k, 1), ARROW),
            pool.next_item[0][:, None] + N_SPECIAL,
            np.full((pool.k, 1), SEP),
        ],
        axis=1,
    )
    return [torch.as_tensor(r, dtype=torch.long) for r in rows]


def select_demos(queries: Queries, pool: Demos, choice: np.ndarray) -> Demos:
    """Per query, the pool demonstrations at indices ``choice`` [n, k] (kinds relative to the query)."""
    full = pool_for(queries, pool)
    idx = np.arange(len(queries))[:, None]
    return Demos(
        full.kind[idx, choice],
        full.group[idx, choice],
        full.history[idx, choice],
        full.next_item[idx, choice],
        pool.t0,
    )


# ----------------------------------------------------------------------------- the study (§3.3)


@dataclass
class TestbedPairs:
    """Every (pool demonstration, query user) pair of the study, as [M, N] matrices.

    ``effect``: Effect_D (secant) on the held-out item; ``gain``: the decoder's true gain (loss drop when
    the demonstration is inserted); ``usefulness``: nats of information about the user's group under the
    world's Bayes posterior; ``kind``: same / other / corrupted relative to the user.
    """

    queries: Queries
    pool: Demos
    width: int  # the slot, in tokens
    demo_states: list  # [M] :class:`lrgd.demos.effect.DemoState`
    effect: np.ndarray
    gain: np.ndarray
    usefulness: np.ndarray
    kind: np.ndarray


def testbed_pairs(net, world: RecWorld, n_queries: int, n_pool: int, seed: int = 0) -> TestbedPairs:
    """Draw ``n_queries`` users and a pool of ``n_pool`` demonstrations (seeded) and score every pair:
    M + 2N passes for Effect_D, N + M·N for the true gain."""
    rng = np.random.default_rng([seed, 3])
    queries = world.sample_queries(n_queries, rng)
    pool = demo_pool(world, n_pool, rng)
    width = world.config.demo_history_len + 3
    users, ids = slot_prompts(queries, width), pool_tokens(pool)
    d_states = fx.demo_states(net, users, ids)
    effect = fx.effect_matrix(d_states, fx.user_states(net, users)).numpy()
    gain = fx.true_gain_matrix(net, users, ids).numpy()
    full = pool_for(queries, pool)
    usefulness = world.demo_usefulness(PromptBatch(queries, full)).T
    return TestbedPairs(queries, pool, width, d_states, effect, gain, usefulness, full.kind.T)


def selection_choices(net, world: RecWorld, pairs: TestbedPairs, k: int = 2, seed: int = 0):
    """Pool indices [N, k] each selector picks per query, and the validation-step Effect_D [M, N].

    Legal selectors see no held-out item: random; Effect_D *global* (mean over separate validation users);
    Effect_D *per user* on a validation step (the history's last item as the target). The oracle ranks by
    true usefulness (it needs the user's hidden group) and the last one peeks at the held-out item.
    """
    q, n, m = pairs.queries, len(pairs.queries), pairs.effect.shape[0]
    val_users = world.sample_queries(n, np.random.default_rng([seed, 4]))
    val_self = fx.effect_matrix(
        pairs.demo_states, fx.user_states(net, slot_prompts(q, pairs.width, validation=True))
    ).numpy()
    val_global = fx.effect_matrix(
        pairs.demo_states, fx.user_states(net, slot_prompts(val_users, pairs.width))
    )
    val_global = val_global.numpy().mean(1)
    rng = np.random.default_rng([seed, 5])
    choices = {
        "random": np.stack([rng.choice(m, k, replace=False) for _ in range(n)]),
        "Effect_D global": np.tile(np.argsort(-val_global)[:k], (n, 1)),
        "Effect_D per user (validation step)": np.argsort(-val_self, axis=0)[:k].T,
        "oracle usefulness": np.argsort(-pairs.usefulness, axis=0)[:k].T,
        "Effect_D on the held-out item (peeks)": np.argsort(-pairs.effect, axis=0)[:k].T,
    }
    return choices, val_self


def selection_table(
    net, world: RecWorld, pairs: TestbedPairs, choices: dict, seed: int = 0, n_boot: int = 1000
):
    """Per selector (and zero-shot): the decoder's NDCG@10 on the held-out item with its bootstrap CI, the
    paired difference from random with its CI, and the Bayes observer's NDCG@10 on the same prompts."""
    q = pairs.queries
    batches = {"zero-shot": PromptBatch(q, select_demos(q, pairs.pool, np.zeros((len(q), 0), dtype=int)))}
    batches.update({name: PromptBatch(q, select_demos(q, pairs.pool, ch)) for name, ch in choices.items()})
    ndcg = {name: ranking_metrics(td.score_candidates(net, b))["NDCG@10"] for name, b in batches.items()}
    bayes = {name: ranking_metrics(world.bayes_scores(b))["NDCG@10"] for name, b in batches.items()}
    rows = {}
    for name, v in ndcg.items():
        mean, lo, hi = bootstrap_ci(v, n_boot, seed)
        d, dlo, dhi = bootstrap_ci(v - ndcg["random"], n_boot, seed)
        rows[name] = {"decoder NDCG@10": mean, "CI low": lo, "CI high": hi, "Δ vs random": d,
                      "Δ CI low": dlo, "Δ CI high": dhi, "Bayes NDCG@10": bayes[name].mean()}  # fmt: skip
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------- §4.2: Effect_D variants

#: where Effect_D is computed: on the held-out item (it peeks) and on a legal validation item
SIGNALS = ("test", "validation")


@dataclass
class EffectVariants:
    """Every (pool demonstration, query user) pair with Effect_D for each (signal, loss, rate) and the
    decoder's true outcomes on the held-out item, all [M, N].

    ``effects[(signal, loss, rate)]``: signal in :data:`SIGNALS`, loss in ``("nll", "rank")``, rate in
    ``("secant", "derivative")``; ``gains``: :data:`lrgd.demos.effect_rank.GAINS` on the held-out item
    (positive: the demonstration helps); ``kind``: same / other / corrupted relative to the user;
    ``valid_source``: where the validation target came from.
    """

    queries: Queries
    pool: Demos
    effects: dict
    gains: dict
    kind: np.ndarray
    valid_source: str


def effect_variants(net, world: RecWorld, n_queries: int, n_pool: int, seed: int = 0) -> EffectVariants:
    """Draw users and a pool as :func:`testbed_pairs` does (same seed → the same users and pool) and score
    every pair: M + 8N passes for the eight Effect_D variants (4N of them backward), N + M·N for the true
    outcomes (:func:`lrgd.demos.effect_rank.true_outcomes`)."""
    rng = np.random.default_rng([seed, 3])
    queries = world.sample_queries(n_queries, rng)
    pool = demo_pool(world, n_pool, rng)
    width = world.config.demo_history_len + 3
    users = {
        "test": slot_prompts(queries, width, candidates=True),
        "validation": slot_prompts(validation_queries(world, queries, seed), width, candidates=True),
    }
    ids = pool_tokens(pool)
    d_states = fx.demo_states(net, users["test"], ids)
    effects = {}
    for signal, sps in users.items():
        for (loss, rate), m in fr.variant_matrices(net, sps, d_states).items():
            effects[signal, loss, rate] = m
    gains = fr.true_outcomes(net, users["test"], ids)
    source = "validation next item" if _has_valid(queries) else "last history item"
    return EffectVariants(queries, pool, effects, gains, pool_for(queries, pool).kind.T, source)


def variants_table(v: EffectVariants, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Spearman ρ of each Effect_D variant against each true gain, pooled and within users, with bootstrap
    CIs over users (:func:`lrgd.demos.effect_rank.rho_table`); index (signal, loss, rate, gain)."""
    return fr.rho_table(v.effects, v.gains, ("signal", "loss", "rate"), n_boot, seed)

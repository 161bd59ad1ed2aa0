"""Chapter 3's adapters between testbed B (:mod:`lrgd.testbeds.recworld`) and :mod:`lrgd.demos.effect`.

A shared pool of demonstrations, each query as a prompt with one demonstration slot, and the pool's
demonstrations as token rows that fill the slot. They live here, not in the testbed, so the testbed (a
data source) depends on nothing above it.
"""

from __future__ import annotations

import numpy as np
import torch

from lrgd.demos.effect import SlotPrompt
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
    Queries,
    RecWorld,
)


def slot_prompts(queries: Queries, width: int, validation: bool = False) -> list[SlotPrompt]:
    """Each query as a :class:`SlotPrompt` with one demonstration slot of ``width`` tokens.

    Layout: BOS · [slot] · QUERY h… → · target, so a demonstration placed in the slot gives exactly
    the k = 1 prompt of :meth:`PromptBatch.tokens`. ``validation=True`` uses the history's last item
    as the target (and the history before it): a target that is not the held-out test item.
    """
    out = []
    for h, t in zip(queries.history, queries.target):
        if validation:
            h, t = h[:-1], h[-1]
        rest = np.concatenate([[QUERY], h + N_SPECIAL, [ARROW]])
        out.append(
            SlotPrompt(
                torch.tensor([BOS]),
                torch.as_tensor(rest, dtype=torch.long),
                torch.tensor([t + N_SPECIAL]),
                width,
            )
        )
    return out


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

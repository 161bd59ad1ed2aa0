"""Tests of the demonstration selectors: the leakage guard in every selector, determinism, fallbacks."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from lrgd.errors import ConfigError
from lrgd.rec.data import Dataset, leave_one_out, make_item
from lrgd.rec.select import EFFECT_SELECTORS, SELECTORS, DemoPool


class HashEmbedder:
    """Bag-of-words hashed into 64 dims, unit norm: a fast stand-in for MiniLM."""

    def encode(self, texts, cache=True):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.replace(";", " ").split():
                out[i, zlib.crc32(w.encode()) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def leaky_dataset() -> Dataset:
    """40 users; items 0..19. Every user ends with ... 5, 6 (valid 5, test 6 for the users ending so), and
    many other users have 5 and 6 inside their training sequences and as their next training item."""
    items = {str(i): make_item(str(i), f"Game {i} edition") for i in range(20)}
    rng = np.random.default_rng(0)
    seqs = {}
    for u in range(40):
        body = [str(i) for i in rng.choice(range(7, 20), size=4, replace=False)]
        if u % 2 == 0:  # evaluated-like users: held-out items 5 then 6
            seqs[f"u{u}"] = [*body, "5", "6"]
        else:  # sources containing 5/6 in their training part
            seqs[f"u{u}"] = [*body[:2], "6", "5", *body[2:], "6", "0", "1"]
    return Dataset("leaky", items, seqs, Path("<mem>"))


@pytest.fixture(scope="module")
def pool() -> DemoPool:
    ds = leaky_dataset()
    return DemoPool(
        ds, leave_one_out(ds), history_len=10, seed=0, similarity_pool=100, embedder=HashEmbedder()
    )


@pytest.mark.parametrize("method", [m for m in SELECTORS if m != "zero-shot"])
def test_no_selector_shows_the_users_future(pool: DemoPool, method: str) -> None:
    split, titles = pool.split, {i: it.title for i, it in pool.ds.items.items()}
    guarded = 0
    for user in [u for u in split.test if int(u[1:]) % 2 == 0]:
        held = {split.valid[user][1], split.test[user][1]}
        # the Effect_D selectors rank what they are given: here every pool user, leaky ones included
        ranking = [(u, len(split.train[u]) - 1) for u in pool.users] if method in EFFECT_SELECTORS else None
        sel = pool.select(method, user, 3, split.test[user][0], ranking)
        assert len(sel.demos) == 3
        for d, (src, _cut) in zip(sel.demos, sel.sources):
            assert src != user
            shown = {*d.history, d.next_item}
            assert not shown & {titles[i] for i in held}, (method, user, d)
        guarded += sel.guarded
    # sources end their training part with "6" (held out by the even users) or contain it: some were refused
    if method in ("recent", "popular", "similarity", *EFFECT_SELECTORS):
        assert guarded > 0


def test_selectors_are_deterministic_and_zero_shot_is_empty(pool: DemoPool) -> None:
    user = "u0"
    hist = pool.split.test[user][0]
    for m in SELECTORS:
        a = pool.select(m, user, 2, hist)
        assert a == pool.select(m, user, 2, hist)
    assert pool.select("zero-shot", user, 0).demos == ()
    assert pool.select("random", user, 0).demos == ()
    with pytest.raises(ConfigError, match="unknown demonstration selector"):
        pool.select("nearest", user, 2, hist)


def test_recent_is_anchored_on_the_last_item_and_falls_back(pool: DemoPool) -> None:
    user = "u2"
    hist = pool.split.test[user][0]  # [..., "5"]: the most recent item is 5
    sel = pool.select("recent", user, 2, hist)
    for src, cut in sel.sources[: 2 - sel.fallback]:
        seq = pool.split.train[src]
        assert seq[cut - 1] in [i for i in hist if i in pool.ds.items]
    # every demonstration anchored on item 5 shows item 6 (held out): all refused, random fills in
    only5 = pool.select("recent", user, 2, ["5"])
    assert len(only5.demos) == 2 and only5.fallback == 2 and only5.guarded > 0


def test_effect_selectors_follow_the_ranking_and_fall_back_without_one(pool: DemoPool) -> None:
    user, hist = "u1", pool.split.test["u1"][0]
    ranking = [(u, len(pool.split.train[u]) - 1) for u in reversed(pool.users) if u != user]
    sel = pool.select("effect", user, 2, hist, ranking)
    assert sel.sources == tuple(ranking[:2]) and sel.fallback == 0
    none = pool.select("effect-global", user, 2, hist, None)  # no validation prompt: random, counted
    assert len(none.demos) == 2 and none.fallback == 2


def test_popular_prefers_popular_next_items(pool: DemoPool) -> None:
    sel = pool.select("popular", "u0", 2, pool.split.test["u0"][0])
    pops = [pool.popularity[pool.split.train[s][c]] for s, c in sel.sources]
    assert min(pops) >= np.median(list(pool.popularity.values()))


@pytest.mark.llm
def test_minilm_embeddings() -> None:
    from lrgd.rec.embed import Embedder

    e = Embedder("cpu")
    x = e.encode(
        ["Super Mario Odyssey; Mario Kart 8", "Mario Party; Super Mario Maker", "shampoo for dry hair"],
        cache=False,
    )
    assert x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    assert x[0] @ x[1] > x[0] @ x[2] + 0.2

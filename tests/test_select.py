"""Tests of the demonstration selectors and the one leakage guard: ids *and* titles, in every selector,
determinism, fallbacks, and leakage counted in prompts as built."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from lrgd.errors import ConfigError, DataError
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import Dataset, leave_one_out, make_item, write_synthetic
from lrgd.rec.leakage import HeldOut, count_leaks, held_out, leaks
from lrgd.rec.prompts import Demonstration, prompt_parts
from lrgd.rec.runner import Runner
from lrgd.rec.select import SELECTORS, DemoPool, Selection


class HashEmbedder:
    """Bag-of-words hashed into 64 dims, unit norm: a fast stand-in for MiniLM."""

    def encode(self, texts, cache=True):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.replace(";", " ").split():
                out[i, zlib.crc32(w.encode()) % 64] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


# ----------------------------------------------------------------------------- fixtures


def twin_dataset(n: int = 10) -> Dataset:
    """``n`` users built so that the leaks are known by hand.

    User ``j``: ``[10+j, 300+(j+2)%n, 200+(j+1)%n, 100+j, 200+j]``: valid item ``100+j``, test item
    ``200+j``; training part (and final demonstration) ``10+j, 300+(j+2)%n → 200+(j+1)%n``. Item
    ``300+i`` is a *title twin* of ``200+i`` (another id, the same title). So for evaluated user ``u``:

    * source ``u-1`` shows ``200+u``, u's test item (an id leak);
    * source ``u-2`` shows ``300+u``, the title twin of u's test item (a title leak only);
    * source ``u`` is u's own sequence; every other source is clean.
    """
    items = {}
    for i in range(n):
        for base, word in ((10, 1), (100, 2), (200, 3), (300, 3)):  # 300+i has 200+i's title
            items[str(base + i)] = make_item(str(base + i), f"Item {word} {i}")
    seqs = {
        f"u{j}": [str(10 + j), str(300 + (j + 2) % n), str(200 + (j + 1) % n), str(100 + j), str(200 + j)]
        for j in range(n)
    }
    return Dataset("twins", items, seqs, Path("<mem>"))


def leaky_by_hand(user: str, n: int = 10) -> set[str]:
    """The sources a correct guard must refuse for ``user`` of :func:`twin_dataset` (see its docstring)."""
    u = int(user[1:])
    return {user, f"u{(u - 1) % n}", f"u{(u - 2) % n}"}


def leaky_dataset() -> Dataset:
    """40 users; items 0..19. Every even user ends with ... 5, 6 (valid 5, test 6), and the odd users have
    5 and 6 inside their training sequences and as their next training item."""
    items = {str(i): make_item(str(i), f"Game {i} edition") for i in range(20)}
    rng = np.random.default_rng(0)
    seqs = {}
    for u in range(40):
        body = [str(i) for i in rng.choice(range(7, 20), size=4, replace=False)]
        if u % 2 == 0:
            seqs[f"u{u}"] = [*body, "5", "6"]
        else:
            seqs[f"u{u}"] = [*body[:2], "6", "5", *body[2:], "6", "0", "1"]
    return Dataset("leaky", items, seqs, Path("<mem>"))


def runner_for(ds: Dataset, tmp: Path) -> Runner:
    write_synthetic(ds, tmp / "data" / "amazon-games", "amazon-games")
    r = Runner("ci", "cpu", quiet=True, results_root=tmp / "res", data_dir=tmp / "data")
    r._embedder = HashEmbedder()  # the similarity selector without MiniLM
    return r


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> Runner:
    return runner_for(leaky_dataset(), tmp_path_factory.mktemp("leaky"))


@pytest.fixture(scope="module")
def twins(tmp_path_factory) -> Runner:
    return runner_for(twin_dataset(), tmp_path_factory.mktemp("twins"))


def select(runner: Runner, method: str, user: str, k: int, history=None) -> Selection:
    cfg = EvalConfig("amazon-games", method, k, history_len=10)
    if history is None:
        history = runner.target(cfg, user)[0]
    return runner.select(cfg, user, history)


DEMO_SELECTORS = ("random", "recent", "similarity", "popular")


# ----------------------------------------------------------------------------- the guard


def test_guard_refuses_ids_and_title_twins_by_hand(twins: Runner) -> None:
    pool = twins.pool(EvalConfig("amazon-games", "random", 1))
    for j in range(10):
        user = f"u{j}"
        held = pool.held_out(user)
        assert held.ids == {f"{100 + j}", f"{200 + j}"} and held.titles == {f"Item 2 {j}", f"Item 3 {j}"}
        refused = {
            src for src in pool.users if not pool.allowed(user, src, pool.make(*pool.final(src))[1], held)
        }
        assert refused == leaky_by_hand(user)
    # the title twin alone: source u7 shows 300+9 ("Item 3 9"), an id u9 never had
    assert not leaks(pool.held_out("u9"), ids=["17", "309", "208"])
    assert leaks(pool.held_out("u9"), ids=["17", "309", "208"], titles=["Item 1 7", "Item 3 9", "Item 3 8"])


@pytest.mark.parametrize("method", DEMO_SELECTORS)
def test_no_selector_shows_a_held_out_title_twin(twins: Runner, method: str) -> None:
    for j in range(10):
        user = f"u{j}"
        sel = select(twins, method, user, 2)
        assert len(sel.demos) == 2
        assert not {src for src, _ in sel.sources} & leaky_by_hand(user), (method, user, sel.sources)


@pytest.mark.parametrize("method", DEMO_SELECTORS)
def test_no_selector_shows_the_users_future(leaky: Runner, method: str) -> None:
    st = leaky.data("amazon-games")
    split, titles = st.split, {i: it.title for i, it in st.ds.items.items()}
    guarded = 0
    for user in [u for u in split.test if int(u[1:]) % 2 == 0]:
        held = {split.valid[user][1], split.test[user][1]}
        sel = select(leaky, method, user, 3)
        assert len(sel.demos) == 3
        for d, (src, _cut) in zip(sel.demos, sel.sources):
            assert src != user
            assert not {*d.history, d.next_item} & {titles[i] for i in held}, (method, user, d)
        guarded += sel.guarded
    # sources end their training part with "6" (held out by the even users) or contain it: some were refused
    if method != "random":
        assert guarded > 0


def test_count_leaks_reads_prompts_as_built() -> None:
    held = HeldOut(frozenset({"6"}), frozenset({"Halo 4", "Tetris"}))
    demos = [
        Demonstration(("Halo 3", "Halo 4"), "Fable"),  # shows a held title in its history
        Demonstration(("Halo",), "Halo 45"),  # substrings of held titles are not titles
        Demonstration(("Doom",), "Tetris"),  # shows a held title as its next item
    ]
    text = "".join(t for _, t in prompt_parts(["Tetris", "Halo 4"], demos))  # the user's own history: fine
    assert count_leaks(text, held) == 2
    assert count_leaks(demos, held) == 2
    assert count_leaks("".join(t for _, t in prompt_parts(["Halo 4"], demos[1:2])), held) == 0


def test_held_out_covers_several_users() -> None:
    ds = twin_dataset()
    split = leave_one_out(ds)
    both = held_out(ds, split, ["u1", "u2"])
    assert both.ids == {"101", "201", "102", "202"} and "Item 3 2" in both.titles
    assert both & {"201", "Item 3 2", "Item 1 1"} == {"201", "Item 3 2"}  # what `held & shown` finds


# ----------------------------------------------------------------------------- the selectors


def test_selectors_are_deterministic_and_zero_shot_is_empty(leaky: Runner) -> None:
    for m in DEMO_SELECTORS:
        assert select(leaky, m, "u0", 2) == select(leaky, m, "u0", 2)
    assert select(leaky, "zero-shot", "u0", 0).demos == ()
    with pytest.raises(ConfigError, match="unknown demonstration selector 'nearest'"):
        SELECTORS.get("nearest")
    assert {"zero-shot", "random", "recent", "similarity", "popular", "effect", "effect-global"} <= set(
        SELECTORS
    )


def test_recent_is_anchored_on_the_last_item_and_falls_back(leaky: Runner) -> None:
    pool = leaky.pool(EvalConfig("amazon-games", "recent", 2))
    user = "u2"
    hist = pool.split.test[user][0]  # [..., "5"]: the most recent item is 5
    sel = select(leaky, "recent", user, 2, hist)
    for src, cut in sel.sources[: 2 - sel.fallback]:
        assert pool.split.train[src][cut - 1] in hist
    # every demonstration anchored on item 5 shows item 6 (held out): all refused, random fills in
    only5 = select(leaky, "recent", user, 2, ["5"])
    assert len(only5.demos) == 2 and only5.fallback == 2 and only5.guarded > 0


def test_take_follows_a_ranking_and_falls_back(leaky: Runner) -> None:
    pool = leaky.pool(EvalConfig("amazon-games", "random", 2))
    user = "u1"
    ranking = [pool.final(u) for u in reversed(pool.users) if u != user]
    sel = pool.take(user, 2, iter(ranking), fill_random=True)
    assert sel.sources == tuple(ranking[:2]) and sel.fallback == 0
    empty = pool.take(user, 2, iter(()), fill_random=True)  # nothing ranked: random, counted
    assert len(empty.demos) == 2 and empty.fallback == 2
    with pytest.raises(DataError, match="leakage-free"):
        pool.take(user, 2, iter(()))


def test_popular_prefers_popular_next_items(leaky: Runner) -> None:
    pool = leaky.pool(EvalConfig("amazon-games", "popular", 2))
    sel = select(leaky, "popular", "u0", 2)
    pops = [pool.popularity[pool.split.train[s][c]] for s, c in sel.sources]
    assert min(pops) >= np.median(list(pool.popularity.values()))


def test_similarity_pool_comes_from_the_profile_and_is_checked() -> None:
    from lrgd.config import get_profile

    cfg = EvalConfig("amazon-games", "similarity", 2)
    assert cfg.method_object(get_profile("ci")).similarity_pool == get_profile("ci").eval.similarity_pool
    assert cfg.method_object(get_profile("full")).similarity_pool == get_profile("full").eval.similarity_pool
    with pytest.raises(ConfigError, match="--similarity-pool must be ≥ 1"):
        EvalConfig("amazon-games", "similarity", 2, params={"similarity_pool": 0}).validate()
    with pytest.raises(ConfigError, match="takes no parameter similarity_pool"):
        EvalConfig("amazon-games", "random", 2, params={"similarity_pool": 10}).validate()


def test_demo_pool_streams_use_final_transitions(leaky: Runner) -> None:
    pool: DemoPool = leaky.pool(EvalConfig("amazon-games", "random", 1))
    first = next(pool.random_stream("u0"))
    assert first == pool.final(first[0]) and first[1] == len(pool.split.train[first[0]]) - 1


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


def test_guard_own_refuses_only_the_users_own_sequence() -> None:
    """With ``guard="own"`` the demonstrations that show u's test item (id or title twin) are allowed:
    other users' training transitions into the target are evidence; u's own sequence is still refused."""
    ds = twin_dataset()
    split = leave_one_out(ds)
    held = DemoPool(ds, split, guard="held-out")
    own = DemoPool(ds, split, guard="own")
    for user in split.train:
        stream = [own.final(u) for u in sorted(split.train)]
        refused_held = set(split.train) - {s for s, _ in held.take(user, 7, iter(stream)).sources}
        refused_own = set(split.train) - {s for s, _ in own.take(user, 9, iter(stream)).sources}
        assert refused_held == leaky_by_hand(user)
        assert refused_own == {user}
    with pytest.raises(ConfigError, match="guard"):
        DemoPool(ds, split, guard="none")
    with pytest.raises(ConfigError, match="guard"):
        EvalConfig("amazon-games", "random", k=2, guard="open").validate()

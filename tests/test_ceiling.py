"""Tests of the information ceiling (chapter 2b): the ``ref-vote`` reference on a case computed by hand,
its two guards, its parameters, and the ceiling table and the LLM's share built on it."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from test_rank import tiny_model_folder
from test_select import runner_for as runner_on

from lrgd.config import CeilingSizes
from lrgd.errors import ConfigError
from lrgd.rec.ceiling import (
    HIT_COLUMNS,
    METRICS,
    ceiling_figure,
    ceiling_grid,
    ceiling_pivot,
    demo_hits,
    llm_capture,
    vote_config,
)
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import Dataset, make_item, make_synthetic
from lrgd.rec.runner import Runner

matplotlib.use("Agg")

# ----------------------------------------------------------------------------- a case by hand

#: The evaluated user ``q`` has history 1, 2, 3 (valid item 3) and test target 4. Other users' training
#: parts (sequence minus the last two items) hold these transitions after q's history items:
#: after 3: a 3→4, b 3→4, c 3→6; after 2: d 2→7, e 2→4; after 1: only q's own 1→2. f 8→9 and g 10→11
#: are elsewhere (random fill). Items 101–114 are the other users' valid and test items.
HAND = {
    "q": ["1", "2", "3", "4"],
    "a": ["3", "4", "5", "101", "102"],
    "b": ["3", "4", "103", "104"],
    "c": ["3", "6", "105", "106"],
    "d": ["2", "7", "107", "108"],
    "e": ["2", "4", "109", "110"],
    "f": ["8", "9", "111", "112"],
    "g": ["10", "11", "113", "114"],
}
#: training popularity of the items, counted by hand from the training parts; the largest is 3
POP = {"1": 1, "2": 3, "3": 3, "4": 3, "5": 1, "6": 1, "7": 1, "8": 1, "9": 1, "10": 1, "11": 1}


def hand_dataset() -> Dataset:
    ids = sorted({i for s in HAND.values() for i in s}, key=int)
    items = {i: make_item(i, f"Film number {i}") for i in ids}
    return Dataset("hand", items, {u: list(s) for u, s in HAND.items()}, Path("<mem>"))


@pytest.fixture(scope="module")
def hand(tmp_path_factory) -> Runner:
    return runner_on(hand_dataset(), tmp_path_factory.mktemp("hand"))


def vote_scores(runner: Runner, k: int, guard: str, candidates: list[str]) -> np.ndarray:
    cfg = vote_config("amazon-games", "recent", k, n_users=None, guard=guard)
    hist, _ = runner.target(cfg, "q")
    return runner.method(cfg).score_with(runner, cfg, "q", hist, candidates)


CANDIDATES = ["4", "6", "7", "9", "11", "5"]


@pytest.mark.parametrize(
    "k,votes",
    [
        (3, {"4": 2, "6": 1}),  # the three transitions after q's last item 3: a, b, c
        (5, {"4": 3, "6": 1, "7": 1}),  # then both after 2: d, e
    ],
)
def test_vote_counts_the_transitions_after_the_last_items_by_hand(hand: Runner, k: int, votes: dict) -> None:
    expected = [votes.get(c, 0) + POP.get(c, 0) / 4 for c in CANDIDATES]
    np.testing.assert_allclose(vote_scores(hand, k, "own", CANDIDATES), expected, rtol=0, atol=1e-12)
    cfg = vote_config("amazon-games", "recent", k, n_users=None)
    hits = demo_hits(hand, cfg)
    assert hits["hits"][hits["users"].index("q")] == votes["4"]
    assert hits["fallback"][hits["users"].index("q")] == 0


def test_guarded_vote_never_votes_the_target_by_hand(hand: Runner) -> None:
    # chapter 2's guard holds out q's valid item 3 and test item 4: every demonstration after 3 shows 3,
    # e shows 4; d (2→7) stays and random fill adds the only clean finals left, f (8→9) and g (10→11)
    expected = [{"7": 1, "9": 1, "11": 1}.get(c, 0) + POP.get(c, 0) / 4 for c in CANDIDATES]
    np.testing.assert_allclose(vote_scores(hand, 3, "held-out", CANDIDATES), expected, rtol=0, atol=1e-12)
    cfg = vote_config("amazon-games", "recent", 3, n_users=None, guard="held-out")
    hits = demo_hits(hand, cfg)
    i = hits["users"].index("q")
    assert hits["hits"][i] == 0 and hits["fallback"][i] == 2
    # through the runner, on the saved candidates: 4 scores 0.75, beaten only by the voted 7, 9, 11
    res = hand.run(cfg)
    cands = hand.records(cfg)[i]["candidates"]
    assert res["ranks"]["score"][i] == 1 + len({"7", "9", "11"} & set(cands))


def test_the_open_vote_still_refuses_the_users_own_sequence(hand: Runner) -> None:
    cfg = vote_config("amazon-games", "recent", 6, n_users=None, guard="own")
    hist, _ = hand.target(cfg, "q")
    nxt, fill = hand.method(cfg).next_items(hand, cfg, "q", hist)
    # after 3: a, b, c (4, 4, 6); after 2: d, e (7, 4); after 1 only q's own 1→2, refused: random fill
    assert sorted(nxt[:3]) == ["4", "4", "6"] and sorted(nxt[3:5]) == ["4", "7"] and fill == 1
    sel = hand.select(EvalConfig("amazon-games", "recent", 6, guard="own"), "q", hist)
    assert "q" not in {src for src, _ in sel.sources}


# ----------------------------------------------------------------------------- the guard on random data


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Runner:
    ds = make_synthetic(n_users=40, n_items=60, seed=1, min_len=4, max_len=9)
    return runner_on(ds, tmp_path_factory.mktemp("synthetic"))


@pytest.mark.parametrize("selector", ["random", "recent", "similarity", "popular"])
def test_guarded_votes_never_reach_the_target_nor_beat_popularity(synthetic: Runner, selector: str) -> None:
    cfg = vote_config("amazon-games", selector, 4, n_users=25, n_candidates=10, guard="held-out")
    pop = synthetic.run(EvalConfig("amazon-games", "ref-popularity", n_users=25, n_candidates=10))
    vote = synthetic.run(cfg)
    assert sum(demo_hits(synthetic, cfg)["hits"]) == 0
    # the target gets no vote, so every voted candidate passes it: rank ≥ popularity's, user by user
    assert all(v >= p for v, p in zip(vote["ranks"]["score"], pop["ranks"]["score"]))


@pytest.mark.parametrize("guard", ["held-out", "own"])
@pytest.mark.parametrize("selector", ["random", "recent", "similarity", "popular"])
def test_the_vote_uses_the_llm_prompts_demonstrations(synthetic: Runner, selector: str, guard: str) -> None:
    cfg = vote_config("amazon-games", selector, 3, n_users=8, guard=guard)
    vote = synthetic.method(cfg)
    train = synthetic.data("amazon-games").split.train
    for user in synthetic.users(cfg):
        hist, _ = synthetic.target(cfg, user)
        llm = synthetic.select(EvalConfig("amazon-games", selector, 3, guard=guard), user, hist)  # a prompt's
        nxt, fill = vote.next_items(synthetic, cfg, user, hist)
        assert nxt == tuple(train[s][c] for s, c in llm.sources) and fill == llm.fallback


@pytest.mark.parametrize(
    "params,message",
    [
        ({"vote_k": 0}, "--vote-k must be ≥ 1"),
        ({"vote_selector": "zero-shot"}, "--vote-selector 'zero-shot' takes no demonstrations; choose"),
        ({"vote_selector": "nearest"}, "--vote-selector 'nearest' is not a selector; choose one of random"),
        ({"vote_k": "4"}, "parameter vote_k must be int"),
    ],
)
def test_bad_vote_parameters_are_one_line(params: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        EvalConfig("amazon-games", "ref-vote", params=params).validate()
    assert "\n" not in str(exc.value)


def test_the_cache_key_follows_the_vote_and_its_selector(synthetic: Runner) -> None:
    keys = {
        synthetic.key(vote_config("amazon-games", s, k, n_users=5, guard=g))
        for s in ("recent", "similarity")
        for k in (1, 2)
        for g in ("held-out", "own")
    }
    assert len(keys) == 8
    sim = synthetic.method(vote_config("amazon-games", "similarity", 1, n_users=5))
    assert {"lrgd.rec.select", "lrgd.rec.leakage", "lrgd.rec.embed"} <= set(sim.code)


# ----------------------------------------------------------------------------- the table


def test_ceiling_grid_columns_identity_and_cache(synthetic: Runner) -> None:
    sizes = CeilingSizes(("amazon-games",), ("random", "recent", "similarity", "popular"), (1, 3), 12)
    df = ceiling_grid(synthetic, sizes)
    metrics = [f"{m}{x}" for m in METRICS for x in ("", " lo", " hi")]
    columns = ["dataset", "method", "selector", "k", "guard", "n_users", "ΔNDCG@10", "Δ lo", "Δ hi", "p",
               "p (Holm)", *HIT_COLUMNS, *metrics]  # fmt: skip
    assert set(columns) <= set(df.columns) and len(df) == 2 + 4 * 2
    pop = df[df["method"] == "popularity"].iloc[0]
    # identity (a sanity check, not evidence): popularity minus itself on the same users is exactly 0
    assert pop["ΔNDCG@10"] == pop["Δ lo"] == pop["Δ hi"] == 0.0 and np.isnan(pop["p"])
    tested = df[df["p"].notna()]
    assert len(tested) == len(df) - 1 and (tested["p (Holm)"] >= tested["p"] - 1e-12).all()
    votes = df[df["method"] == "vote"]
    assert votes[list(HIT_COLUMNS)].notna().all().all() and (votes["n_users"] == 12).all()
    assert ((votes["target among next items"] >= 0) & (votes["target among next items"] <= 1)).all()
    # the vote row agrees with the summary the runner wrote for that condition
    r = synthetic.run(vote_config("amazon-games", "recent", 3, n_users=12))
    row = votes[(votes["selector"] == "recent") & (votes["k"] == 3)].iloc[0]
    assert row["NDCG@10"] == r["metrics"]["score"]["NDCG@10"]["mean"]
    again = ceiling_grid(synthetic, sizes)  # served from the runner's cache
    pd.testing.assert_frame_equal(df, again)
    valid = ceiling_grid(synthetic, replace(sizes, ks=(1,), n_valid_users=7), split="valid")
    assert (valid["n_users"] == 7).all() and len(valid) == 2 + 4
    pivot = ceiling_pivot(df)
    assert pivot.shape == (1, 1 + 1 + 4 * 2)
    for paired in (False, True):
        fig = ceiling_figure(df, paired=paired)
        assert len(fig.axes) == 1 and len(fig.axes[0].get_legend().get_texts()) == 2 + 4


# ----------------------------------------------------------------------------- the LLM's share


def test_llm_capture_on_a_tiny_model(tmp_path) -> None:
    ds = make_synthetic(n_users=30, n_items=50, seed=2, min_len=4, max_len=8)
    runner = runner_on(ds, tmp_path)
    model = str(tiny_model_folder(tmp_path / "tiny"))
    df = llm_capture(
        runner, model, datasets=["amazon-games"], methods=["zero-shot", "random"], k=1, n_users=6,
        variant="summed",
    )  # fmt: skip
    assert list(df["selector"]) == ["random"] and (df["n_users"] == 6).all()
    # the guarded vote never beats popularity (see the test above), so its gain is ≤ 0
    assert (df["vote gain (LLM's demos)"] <= 0).all()
    # identity: the mean of per-user differences of gains is the difference of the mean gains
    np.testing.assert_allclose(df["LLM − ceiling"], df["LLM gain"] - df["ceiling gain"], atol=1e-12)

"""Adapting over time in calendar windows (lrgd.robust.windows) and ML-100k's timestamps (lrgd.rec.data):
timestamps follow the sequences, windows partition the users, a test user never chooses demonstrations,
the static set is window 0's in every window, and a dataset without timestamps is one clear line."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from test_robust_optimize import patched_runner  # the tiny reader patched into a runner

from lrgd.config import RobustSizes
from lrgd.errors import ConfigError, DataError
from lrgd.rec.data import load_dataset, make_synthetic, write_synthetic
from lrgd.rec.runner import Runner
from lrgd.robust import windows as rw

pytestmark = pytest.mark.usefixtures("one_thread")

MODEL = "trained:reader-anon"
SIZES = replace(RobustSizes(), drift_windows=3, drift_k=2, drift_pool=3, drift_valid_users=4,
                drift_test_users=4, drift_max_iters=2, drift_max_moves=4, drift_patience=1)  # fmt: skip


def write_ml(root: Path, n_users: int = 90) -> Path:
    """A synthetic dataset in ml-100k's format; user u rates from day 3u on, one item per hour, the rows
    of each user written in reverse (the loader must sort them by time)."""
    ds = make_synthetic(n_users=n_users, n_items=50, seed=5, min_len=5, max_len=9)
    folder = write_synthetic(ds, root / "ml-100k", "ml-100k")
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float\n"]
    for u, seq in ds.sequences.items():
        times = [880_000_000 + 3 * 86400 * int(u) + 3600 * t for t in range(len(seq))]
        rows += [f"{u}\t{i}\t4\t{t}\n" for t, i in zip(times, seq)][::-1]
    (folder / "ml-100k.inter").write_text("".join(rows), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def runner(tmp_path_factory) -> Runner:
    return patched_runner(write_ml(tmp_path_factory.mktemp("data")), tmp_path_factory.mktemp("res"))


@pytest.fixture(scope="module")
def study(runner) -> dict:
    return rw.run_windows(runner, SIZES, MODEL, seed=0)


# ----------------------------------------------------------------------------- timestamps


def test_timestamps_follow_the_sequences(tmp_path) -> None:
    """Hand check: rows out of order, a tie on time keeps file order; each item's time sits beside it."""
    folder = tmp_path / "ml-100k"
    write_synthetic(make_synthetic(n_users=2, n_items=5, seed=0, min_len=3, max_len=3), folder, "ml-100k")
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    (folder / "ml-100k.inter").write_text(inter + "7\t3\t4\t20\n5\t1\t3\t10\n7\t1\t5\t10\n7\t2\t1\t20\n")
    ds = load_dataset("ml-100k", data_dir=tmp_path)
    assert ds.sequences == {"5": ["1"], "7": ["1", "3", "2"]}
    assert ds.timestamps == {"5": [10.0], "7": [10.0, 20.0, 20.0]}


def test_timestamps_of_the_synthetic_windows_data(tmp_path) -> None:
    ds = load_dataset("ml-100k", data_dir=write_ml(tmp_path, n_users=6))
    for u, seq in ds.sequences.items():
        want = [880_000_000 + 3 * 86400 * int(u) + 3600 * t for t in range(len(seq))]
        assert ds.timestamps[u] == want  # written in reverse, read back in time order


def test_amazon_sets_have_no_timestamps(tmp_path) -> None:
    write_synthetic(make_synthetic(n_users=5, seed=1), tmp_path / "amazon-games", "amazon-games")
    assert load_dataset("amazon-games", data_dir=tmp_path).timestamps is None


def test_real_ml100k_unchanged_by_timestamps() -> None:
    """The sequences and the fingerprint every chapter's cache keys on are those of the loader before
    timestamps were kept (2257f99d31e87955, computed with that loader); times rise along each sequence."""
    try:
        ds = load_dataset("ml-100k")
    except DataError as e:
        pytest.skip(f"ml-100k not available: {e}")
    assert ds.fingerprint() == "2257f99d31e87955"
    assert ds.timestamps.keys() == ds.sequences.keys()
    for u, seq in ds.sequences.items():
        t = ds.timestamps[u]
        assert len(t) == len(seq) and all(a <= b for a, b in itertools.pairwise(t))


# ----------------------------------------------------------------------------- windows and users


def test_equal_count_windows() -> None:
    t = np.arange(100.0)
    edges = rw.window_edges(t, 4)
    assert np.bincount(rw.window_of(t, edges)).tolist() == [25, 25, 25, 25]
    assert rw.window_of([-1e9, 1e12], edges).tolist() == [0, 3]  # the ends are open
    with pytest.raises(ConfigError, match="drift_windows"):
        rw.window_edges(t, 0)


def test_windows_partition_the_users_and_roles_never_overlap(runner) -> None:
    st = runner.data("ml-100k")
    ts = st.ds.timestamps
    test_order = runner.eligible_users("ml-100k", "test", 0)[0]
    edges = rw.window_edges([ts[u][-1] for u in test_order], 3)
    win = dict(zip(test_order, rw.window_of([ts[u][-1] for u in test_order], edges).tolist()))
    assert sorted(np.bincount(list(win.values())).tolist()) == [30, 30, 30]  # every user in one window
    users = rw.assign_users(runner, "ml-100k", edges, n_valid=6, n_test=100, seed=0)
    valid = [u for w in users for u in (*w.train, *w.holdout)]
    test = [u for w in users for u in w.test]
    assert len(valid) == len(set(valid)) == 18 and len(test) == len(set(test))
    assert not set(valid) & set(test)  # a test user is nobody's validation user
    for w, wu in enumerate(users):
        assert len(wu.train) == len(wu.holdout) == 3
        assert all(rw.window_of([ts[u][-2]], edges)[0] == w for u in (*wu.train, *wu.holdout))
        assert all(win[u] == w for u in wu.test)
    assert sorted(valid + test) == sorted(win)  # n_test large: the windows' users are all used
    with pytest.raises(ConfigError, match=r"lower robust\.drift_windows"):
        rw.assign_users(runner, "ml-100k", edges, n_valid=40, n_test=1, seed=0)


# ----------------------------------------------------------------------------- the study


def test_static_is_window_0s_set_and_sets_use_available_demonstrations(study) -> None:
    wins, src_win = study["windows"], np.array(study["source_window"])
    assert len(wins) == SIZES.drift_windows
    assert np.bincount(src_win).tolist() == [SIZES.drift_pool] * SIZES.drift_windows
    first = wins[0]["sets"]["adaptive"]
    for w in wins:
        assert w["sets"]["static"] == first
        for m in ("adaptive", "random"):
            ids = w["sets"][m]
            assert len(ids) == SIZES.drift_k and (src_win[ids] <= w["window"]).all()
        assert w["sets"]["zero-shot"] == []
        assert w["window"] == 0 or w["stage1_passes"] == 0  # stage 1 runs in window 0 only
        for m in rw.METHODS:
            assert len(w["metrics"][m]["NDCG@10"]) == w["n_test"] == len(w["test_users"])
    # identity (a sanity check): in window 0 adaptive and static are one set, so their scores agree
    assert wins[0]["metrics"]["adaptive"] == wins[0]["metrics"]["static"]
    assert wins[0]["stage1_passes"] == wins[0]["n_train"] * (SIZES.drift_pool + 1)  # M·N + N


def test_no_test_user_chooses_or_supplies_demonstrations(runner, study) -> None:
    test = {u for w in study["windows"] for u in w["test_users"]}
    assert not test & {u for u, _ in study["sources"]}
    users = rw.assign_users(runner, "ml-100k", np.array(study["edges"]), SIZES.drift_valid_users,
                            SIZES.drift_test_users, 0)  # fmt: skip
    for wu, w in zip(users, study["windows"]):
        assert wu.test == w["test_users"]
        assert not set(wu.test) & (set(wu.train) | set(wu.holdout))


def test_tables(study) -> None:
    t = rw.window_table(study)
    assert len(t) == SIZES.drift_windows * len(rw.METHODS)
    assert ((t["NDCG@10 lo"] <= t["NDCG@10"]) & (t["NDCG@10"] <= t["NDCG@10 hi"])).all()
    p = rw.paired_table(study)
    assert p.loc[0, "same set"] and p.loc[0, "ΔNDCG@10"] == 0.0
    c = rw.cost_table(study)
    assert (c["static passes"].iloc[1:] == 0).all() and c["available"].tolist() == [3, 6, 9]


def test_a_dataset_without_timestamps_is_one_line(tmp_path) -> None:
    write_synthetic(make_synthetic(n_users=30, seed=1), tmp_path / "amazon-games", "amazon-games")
    r = patched_runner(tmp_path, tmp_path / "res")
    line = r"^amazon-games has no timestamps; adaptation over time runs on ml-100k only$"
    with pytest.raises(DataError, match=line):
        rw.run_windows(r, replace(SIZES, drift_dataset="amazon-games"), MODEL)


def test_bad_sizes_are_one_line(runner) -> None:
    with pytest.raises(ConfigError, match=r"robust.drift_k=3 must be smaller than robust.drift_pool=3"):
        rw.run_windows(runner, replace(SIZES, drift_k=3), MODEL)

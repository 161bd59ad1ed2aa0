"""Tests of the item-id sequential recommender (SASRec, k = 0): leakage-free training windows, a real
learning check on a deterministic world, resumption after an interrupted training, and ``ref-itemid``
through the runner."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import lrgd.models.itemid as itemid
from lrgd.errors import ConfigError, DataError
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import Dataset, leave_one_out, load_dataset, make_item, write_synthetic
from lrgd.rec.runner import Runner

#: a small model that learns the chain world in a few seconds on one thread
SMALL = {"hidden": 32, "layers": 1, "heads": 2, "max_len": 8, "dropout": 0.0, "epochs": 12, "batch": 64,
         "lr": 1e-2, "negatives": 0}  # fmt: skip


def chain_dataset(n_users: int = 200, n_items: int = 40, seed: int = 0) -> Dataset:
    """Every user reads consecutive items: item i is always followed by item i + 1 (mod n_items, so
    every item is some users' training item)."""
    rng = np.random.default_rng(seed)
    items = {str(i): make_item(str(i), f"Item {i}") for i in range(n_items)}
    seqs = {}
    for u in range(n_users):
        start, length = int(rng.integers(n_items)), int(rng.integers(5, 10))
        seqs[str(u)] = [str((start + t) % n_items) for t in range(length)]
    return Dataset("synthetic", items, seqs, Path("<chain>"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The chain world written as a Games-format dataset, its split, and a private weight cache."""
    root = tmp_path_factory.mktemp("data")
    write_synthetic(chain_dataset(), root / "amazon-games", "amazon-games")
    ds = load_dataset("amazon-games", root)
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LRGD_CACHE", str(cache))
        yield {"root": root, "ds": ds, "split": leave_one_out(ds), "cache": cache}


@pytest.fixture(scope="module")
def trained(world):
    spec = itemid.Spec("amazon-games", **SMALL)
    return itemid.fit(spec, world["ds"], world["split"], threads=1, quiet=True)


# ----------------------------------------------------------------------------- leakage


def test_training_windows_never_hold_a_valid_or_test_item() -> None:
    # each user's last two items are ids that occur nowhere else: any of them in a window is a leak
    rng = np.random.default_rng(3)
    seqs = {
        str(u): [*(str(i) for i in rng.choice(30, size=int(rng.integers(1, 12)), replace=False)),
                 f"v{u}", f"t{u}"]
        for u in range(60)
    }  # fmt: skip
    ids = sorted({i for s in seqs.values() for i in s})
    ds = Dataset("synthetic", {i: make_item(i, f"Item {i}") for i in ids}, seqs, Path("<leak>"))
    split = leave_one_out(ds)
    index = itemid.item_index(ds)
    w = itemid.training_windows(split.train, index, max_len=4)
    held = {index[i] for i in ids if i[0] in "vt"}
    used = set(w.inputs[w.inputs > 0].tolist()) | set(w.targets[w.targets > 0].tolist())
    assert used and not used & held
    assert w.n_tokens == sum(len(s) - 1 for s in split.train.values())  # every training transition, once
    itemid.check_windows(w, split, index)  # the check the training runs passes ...
    leaky = itemid.training_windows(ds.sequences, index, max_len=4)  # ... and refuses full sequences
    with pytest.raises(DataError, match="held-out valid/test item would leak"):
        itemid.check_windows(leaky, split, index)


# ----------------------------------------------------------------------------- learning


def test_the_model_learns_the_chain_rule(world, trained) -> None:
    """Full ranking over all 40 items: the trained model puts the true next item first for almost every
    test user; the same architecture untrained is near chance (1/40)."""
    split = world["split"]
    users = list(split.test)
    cands = list(world["ds"].items)

    def top1(model) -> float:
        hits = [
            cands[int(np.argmax(model.score(split.test[u][0], cands)))] == split.test[u][1] for u in users
        ]
        return float(np.mean(hits))

    assert top1(trained) >= 0.9
    fresh = replace(trained, model=itemid.SASRec(len(trained.index), trained.spec).eval())
    assert top1(fresh) <= 0.2
    assert trained.log["best_epoch"] >= 1 and len(trained.log["loss"]) == SMALL["epochs"]
    assert trained.log["loss"][-1] < trained.log["loss"][0]


def test_a_second_fit_reads_the_cache(world, trained) -> None:
    again = itemid.fit(trained.spec, world["ds"], world["split"], threads=1, quiet=True)
    assert again.from_cache and again.path == trained.path
    for k, v in trained.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k])


# ----------------------------------------------------------------------------- resumption


def test_an_interrupted_training_resumes_to_the_same_weights(world, tmp_path, monkeypatch) -> None:
    """Stopped after epoch 1 of 3 and resumed: the resumed call trains only epochs 2 and 3 (from the
    checkpoint: model, optimiser, best weights, log and torch RNG state) and ends with bitwise the same
    weights and log as an uninterrupted run (same machine, threads and torch build)."""
    spec = itemid.Spec("amazon-games", **{**SMALL, "epochs": 3, "dropout": 0.2})  # dropout: RNG state matters
    ds, split = world["ds"], world["split"]
    monkeypatch.setenv("LRGD_CACHE", str(tmp_path / "whole"))
    whole = itemid.fit(spec, ds, split, threads=1, quiet=True)

    monkeypatch.setenv("LRGD_CACHE", str(tmp_path / "resumed"))
    assert itemid.fit(spec, ds, split, threads=1, quiet=True, stop_after=1) is None
    path = itemid.weights_path(spec, ds.fingerprint())
    partial = path.with_name(path.name + ".partial")
    assert partial.is_file() and not path.exists()
    assert torch.load(partial, weights_only=False)["epoch"] == 1
    epochs_run = []
    real = itemid._epoch
    monkeypatch.setattr(itemid, "_epoch", lambda *a: (epochs_run.append(a[4]["epoch"] + 1), real(*a)))
    resumed = itemid.fit(spec, ds, split, threads=1, quiet=True)
    assert epochs_run == [2, 3] and not partial.exists()
    assert resumed.log["loss"] == whole.log["loss"] and resumed.log["valid_ndcg"] == whole.log["valid_ndcg"]
    for k, v in whole.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_a_torn_checkpoint_restarts_the_training(world, tmp_path, monkeypatch, capsys) -> None:
    spec = itemid.Spec("amazon-games", **{**SMALL, "epochs": 1})
    monkeypatch.setenv("LRGD_CACHE", str(tmp_path))
    path = itemid.weights_path(spec, world["ds"].fingerprint())
    path.parent.mkdir(parents=True)
    path.with_name(path.name + ".partial").write_bytes(b"PK\x03\x04 torn")
    out = itemid.fit(spec, world["ds"], world["split"], threads=1, quiet=True)
    assert out.log["best_epoch"] == 1 and "training from the start" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the runner


def test_ref_itemid_through_the_runner(world, trained, tmp_path) -> None:
    params = {f"itemid_{k}": v for k, v in SMALL.items()}
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=world["root"])
    cfg = EvalConfig("amazon-games", "ref-itemid", n_users=60, n_candidates=10, params=params)
    res = runner.run(cfg)  # reads the weights `trained` cached (same spec, data and code)
    pop = runner.run(replace(cfg, method="ref-popularity", params=()))
    assert res["users"] == pop["users"] and res["n_users"] == 60
    assert res["metrics"]["score"]["HR@1"]["mean"] >= 0.9
    assert res["metrics"]["score"]["NDCG@10"]["mean"] > pop["metrics"]["score"]["NDCG@10"]["mean"] + 0.2
    # the sizes and this module's source are part of the record key: other sizes, other records
    assert "lrgd.models.itemid" in runner.code_modules(cfg)
    other = replace(cfg, params={**params, "itemid_epochs": SMALL["epochs"] + 1})
    assert runner.key(other) != runner.key(cfg)


# ----------------------------------------------------------------------------- bad input


def test_bad_sizes_and_unknown_items_are_one_line_errors(trained) -> None:
    with pytest.raises(ConfigError, match="must divide hidden"):
        EvalConfig("amazon-games", "ref-itemid", params={"itemid_heads": 3}).validate()
    with pytest.raises(ConfigError, match="dropout must lie in"):
        itemid.Spec("x", dropout=1.5).validate()
    with pytest.raises(DataError, match="'nope' is not in the dataset"):
        trained.score(["1", "nope"], ["2", "3"])
    with pytest.raises(DataError, match="non-empty history"):
        trained.score([], ["2", "3"])

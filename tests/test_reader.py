"""The reader (lrgd.models.reader): leakage-free training prompts, per-prompt identity tags, and a copy
check — a reader trained on one synthetic catalogue reads demonstrations on a catalogue it never saw."""

from __future__ import annotations

import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from lrgd.config import ReaderSizes
from lrgd.errors import ConfigError
from lrgd.models import reader as R
from lrgd.rec.data import Dataset, leave_one_out, make_item

TINY = ReaderSizes(
    hidden=32, layers=1, heads=2, intermediate=64, n_tags=64, demo_history=2, query_len=3,
    train_ks=(1, 2), eval_ks=(1, 2), kind_probs=(1.0, 0.0, 0.0), n_negatives=9, steps=300, batch=32,
    lr=3e-3, warmup=20, heldout_user_share=0.2, checkpoint_every=100, threads=1, copy_share=0.0,
    copy_warmup=0,
)  # fmt: skip


class FakeEmbedder:
    """Stands in for MiniLM: a fixed random unit vector per title (seeded by the text)."""

    fingerprint = "fake"

    def encode(self, texts):
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=384) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def successor_world(seed: int, n_items: int = 40, n_users: int = 120, length: int = 7) -> Dataset:
    """Every item has one fixed successor (a random cycle); titles are random words, popularity flat.

    Items ``h*`` appear only as each user's last two items (valid and test), never in training; they are
    untitled, so they are never drawn as negatives either (which would make popularity informative).
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_items)
    succ = {int(order[j]): int(order[(j + 1) % n_items]) for j in range(n_items)}
    items = {str(i): make_item(str(i), f"thing {rng.integers(10**6)}") for i in range(n_items)}
    seqs = {}
    for u in range(n_users):
        a = int(rng.integers(n_items))
        seq = [a]
        for _ in range(length - 1):
            seq.append(succ[seq[-1]])
        held = [f"h{u}v", f"h{u}t"]
        for h in held:
            items[h] = make_item(h, f"held {h}", has_title=False)  # never a negative: popularity stays flat
        seqs[f"u{u}"] = [str(i) for i in seq] + held
    return Dataset(f"succ{seed}", items, seqs, Path("<synthetic>"))


def catalogue(ds: Dataset):
    return R.build_catalogue(ds, leave_one_out(ds), ds.fingerprint(), FakeEmbedder())


def test_training_prompts_never_show_a_held_out_item() -> None:
    ds = successor_world(0)
    cat = catalogue(ds)
    held = {cat.index[i] for i in ds.items if i.startswith("h")}
    rng = np.random.default_rng(0)
    users = R.user_split(cat, TINY.heldout_user_share)[0]
    for k in (0, 2):
        b = R.sample_batch(cat, users, k, TINY, rng, 200)
        shown = set(b.item[b.item >= 0].tolist())
        target = b.cand[torch.arange(len(b.label)), b.label]
        assert not shown & held, "a valid/test item entered a training prompt"
        assert not set(target.tolist()) & held, "a valid/test item was a training target"
    # the held-out users of the catalogue never supply a training query
    query_users = set(users.tolist())
    assert query_users.isdisjoint(R.user_split(cat, TINY.heldout_user_share)[1].tolist())


def test_identity_tags_are_fresh_in_every_prompt() -> None:
    rng = np.random.default_rng(1)
    demos = [([1, 2], 3), ([2, 3], 4)]
    slots_of_3 = set()
    for _ in range(200):
        _, item, slot, cand, cand_slot = R.encode(demos, [5, 1, 2], [3, 7, 8], TINY, rng)
        pairs = {(int(i), int(s)) for i, s in zip(item, slot, strict=True) if i >= 0}
        pairs |= {(int(i), int(s)) for i, s in zip(cand, cand_slot, strict=True)}
        by_item: dict[int, set[int]] = {}
        for i, s in pairs:
            by_item.setdefault(i, set()).add(s)
        assert all(len(s) == 1 for s in by_item.values()), "one item, two tags in one prompt"
        tags = [next(iter(s)) for s in by_item.values()]
        assert len(set(tags)) == len(tags), "two items share a tag in one prompt"
        slots_of_3 |= by_item[3]
    # across prompts the tag of an item is a fresh draw: nearly all of the 64 slots occur in 200 prompts
    assert len(slots_of_3) > 50


def test_too_many_items_for_the_tags_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="n_tags"):
        R.encode([([i, i + 1], i + 2) for i in range(0, 90, 3)], [1], [2], TINY, np.random.default_rng(0))
    with pytest.raises(ConfigError, match="n_tags"):
        replace(TINY, n_tags=8).validate()


def test_popularity_features_rank_ties_equally() -> None:
    f = R.popularity_features(np.array([0.0, 5.0, 5.0, 10.0]))
    assert f[1, 0] == f[2, 0] and f[0, 0] == 0.0 and f[3, 0] == 1.0
    assert f[3, 1] == pytest.approx(1.0) and f[0, 1] == 0.0


def test_copy_on_a_catalogue_it_never_saw(tmp_path: Path) -> None:
    """Trained on one successor world, the reader ranks the next item of the demonstrations first on a
    second world with other titles and another successor map; without demonstrations it is at chance."""
    torch.manual_seed(0)
    trained = R.train([catalogue(successor_world(0))], TINY, tmp_path / "r.pt", seed=0, desc="copy test")
    assert (tmp_path / "r.pt").is_file() and not (tmp_path / "r.partial").exists()
    cat = catalogue(successor_world(7))
    rng = np.random.default_rng(5)
    users = np.arange(len(cat.users))
    hits = {}
    with torch.no_grad():
        for k in (0, 2):
            b = R.sample_batch(cat, users, k, TINY, rng, 300)
            hits[k] = float((trained.model(cat, b).argmax(1) == b.label).float().mean())
    chance = 1 / (TINY.n_negatives + 1)
    assert hits[2] > 0.8, hits  # copies the successor shown by the demonstrations
    assert hits[0] < chance + 0.1, hits  # nothing to read: no item knowledge transfers


def test_training_resumes_from_its_checkpoint(tmp_path: Path, monkeypatch) -> None:
    """Killed after its step-20 checkpoint, a run resumes there and ends with the uninterrupted weights."""
    sizes = replace(TINY, steps=40, checkpoint_every=20)
    cats = [catalogue(successor_world(0))]
    whole = R.train(cats, sizes, tmp_path / "a.pt", seed=0)
    real, calls = R.sample_batch, {"n": 0}
    n_held = len(R.heldout_batches(cats, sizes, 0))  # the held-out prompts are drawn first

    def dies_at_step_30(*args, **kw):
        calls["n"] += 1
        if calls["n"] > 30 + n_held:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(R, "sample_batch", dies_at_step_30)
    with pytest.raises(KeyboardInterrupt):
        R.train(cats, sizes, tmp_path / "b.pt", seed=0)
    assert not (tmp_path / "b.pt").exists()
    assert torch.load(tmp_path / "b.partial", weights_only=False)["step"] == 20
    monkeypatch.setattr(R, "sample_batch", real)
    resumed = R.train(cats, sizes, tmp_path / "b.pt", seed=0)
    after = resumed.model.state_dict()
    for name, a in whole.model.state_dict().items():
        assert torch.equal(a, after[name]), name
    assert resumed.log["prompts"] == whole.log["prompts"] == 40 * sizes.batch


def test_the_reader_is_a_model_of_the_runner(tmp_path: Path, monkeypatch) -> None:
    """``--model trained:reader-anon`` through Runner.run: one record per user, demonstrations from the
    selector, k = 0 and k = 2 on the same candidates, and a cache key that names the weights."""
    from lrgd.config import get_profile
    from lrgd.rec.conditions import EvalConfig
    from lrgd.rec.data import make_synthetic, write_synthetic
    from lrgd.rec.runner import Runner

    monkeypatch.setenv("LRGD_CACHE", str(tmp_path / "cache"))
    write_synthetic(
        make_synthetic(40, 60, seed=1, min_len=4, max_len=9), tmp_path / "d" / "amazon-games", "amazon-games"
    )
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "res", data_dir=tmp_path / "d")
    p = get_profile("ci")
    r.profile = replace(p, reader=replace(TINY, train_datasets=("amazon-games",), steps=30, query_len=5))
    base = {"n_users": 6, "n_candidates": 10, "guard": "own", "model": "trained:reader-anon"}
    zero = r.run(EvalConfig("amazon-games", "zero-shot", 0, **base))
    two = r.run(EvalConfig("amazon-games", "recent", 2, **base))
    assert zero["users"] == two["users"] and len(two["ranks"]["score"]) == 6
    recs = r.records(EvalConfig("amazon-games", "recent", 2, **base))
    assert all(len(x["demo_sources"]) == 2 and 1 <= x["rank"]["score"] <= 10 for x in recs)
    source, key = r.model_source("trained:reader-anon")
    assert source.startswith("reader-") and (tmp_path / "cache" / "reader" / source).is_file()
    r.profile = replace(r.profile, reader=replace(r.profile.reader, steps=31))  # other weights, other key
    assert r.model_source("trained:reader-anon")[1] != key

"""Tests of lrgd.rec.evaluate: hand-computed metrics, bootstrap, the runner's caching and resumption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_rank import tiny_model_folder

from lrgd.errors import ConfigError
from lrgd.rec.data import make_synthetic, write_synthetic
from lrgd.rec.evaluate import (
    EvalConfig,
    Runner,
    _append_record,
    _read_records,
    bootstrap_ci,
    choose_variant,
    expected_random_metrics,
    paired_bootstrap,
    per_user_metrics,
    rank_metrics,
    summarize,
)

# ----------------------------------------------------------------------------- metrics by hand


def test_rank_metrics_by_hand() -> None:
    assert rank_metrics(1) == {"HR@1": 1, "HR@5": 1, "HR@10": 1, "NDCG@5": 1, "NDCG@10": 1, "MRR": 1}
    r3 = rank_metrics(3)  # 1/log2(4) = 0.5
    assert r3 == {
        "HR@1": 0,
        "HR@5": 1,
        "HR@10": 1,
        "NDCG@5": 0.5,
        "NDCG@10": 0.5,
        "MRR": pytest.approx(1 / 3),
    }
    r7 = rank_metrics(7)  # 1/log2(8) = 1/3
    assert r7["HR@5"] == 0 and r7["NDCG@5"] == 0 and r7["HR@10"] == 1
    assert r7["NDCG@10"] == pytest.approx(1 / 3)
    r11 = rank_metrics(11)
    assert r11["HR@10"] == 0 and r11["NDCG@10"] == 0 and r11["MRR"] == pytest.approx(1 / 11)
    with pytest.raises(ValueError):
        rank_metrics(0)


def test_means_by_hand() -> None:
    per = per_user_metrics([1, 3, 7, 11])
    assert per["NDCG@10"].mean() == pytest.approx((1 + 0.5 + 1 / 3 + 0) / 4)
    assert per["HR@5"].mean() == 0.5
    assert per["MRR"].mean() == pytest.approx((1 + 1 / 3 + 1 / 7 + 1 / 11) / 4)
    s = summarize([1, 3, 7, 11], n_boot=500)
    assert s["NDCG@10"]["lo"] <= s["NDCG@10"]["mean"] <= s["NDCG@10"]["hi"]
    rnd = expected_random_metrics(20)
    assert rnd["HR@10"] == 0.5 and rnd["HR@1"] == 0.05
    assert rnd["MRR"] == pytest.approx(sum(1 / r for r in range(1, 21)) / 20)


def test_bootstrap() -> None:
    assert bootstrap_ci([0.5] * 10) == (0.5, 0.5, 0.5)
    x = np.random.default_rng(0).random(200)
    m, lo, hi = bootstrap_ci(x, seed=1)
    assert lo < m < hi and hi - lo < 0.2 and (m, lo, hi) == bootstrap_ci(x, seed=1)
    same = paired_bootstrap(x, x)
    assert same["diff"] == 0 and same["p"] == 1.0
    better = paired_bootstrap(x + 0.1, x)
    assert better["diff"] == pytest.approx(0.1) and better["lo"] > 0 and better["p"] < 0.01
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(x, x[:-1])


def test_choose_variant_pools_users() -> None:
    a = {"ranks": {"summed": [5, 5], "mean": [1, 20], "pmi": [2, 2]}}
    b = {"ranks": {"summed": [5], "mean": [20], "pmi": [2]}}
    best, pooled = choose_variant([a, b])
    assert best == "pmi" and pooled["pmi"] == pytest.approx(1 / np.log2(3))


def test_presets_and_config_validation() -> None:
    bad = {
        "unknown dataset 'amazon-books'": EvalConfig("amazon-books", "random", 2),
        "unknown method 'knn'": EvalConfig("amazon-games", "knn"),
        "uses no demonstrations": EvalConfig("amazon-games", "zero-shot", 2),
        "takes no demonstrations": EvalConfig("amazon-games", "ref-bm25", 1),
        "with k=0 is zero-shot": EvalConfig("amazon-games", "similarity", 0),
        "unknown split": EvalConfig("amazon-games", "zero-shot", split="train"),
    }
    for msg, cfg in bad.items():
        with pytest.raises(ConfigError, match=msg):
            cfg.validate()


# ----------------------------------------------------------------------------- records on disk


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    _append_record(path, {"user": "a"})
    _append_record(path, {"user": "b"})
    with path.open("a") as f:
        f.write('{"user": "c", "ra')  # a write cut short by an interruption
    assert [r["user"] for r in _read_records(path)] == ["a", "b"]
    assert path.read_text().count("\n") == 2  # rewritten without the torn line


# ----------------------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    ds = make_synthetic(n_users=40, n_items=60, seed=1, min_len=4, max_len=9)
    write_synthetic(ds, root / "amazon-games", "amazon-games")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "provenance"}


@pytest.mark.parametrize("method,k", [("ref-markov", 0), ("random", 1)])
def test_interrupt_and_resume_gives_the_same_file(tmp_path, synthetic_root, model_dir, method, k) -> None:
    cfg = EvalConfig("amazon-games", method, k, n_users=8, model=str(model_dir), n_candidates=10)
    one = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "one", data_dir=synthetic_root)
    whole = one.run(cfg)
    two = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "two", data_dir=synthetic_root)
    stopped = two.run(cfg, stop_after=3)
    partial, final = two.paths(cfg)
    assert stopped["interrupted"] and not final.exists()  # no summary before every user is done
    assert len(_read_records(partial)) == 3
    resumed = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "two", data_dir=synthetic_root).run(cfg)
    assert resumed["provenance"]["computed_users"] == 5 and resumed["provenance"]["cached_users"] == 3
    assert strip(resumed) == strip(whole)
    on_disk = json.loads(final.read_text())
    assert strip(on_disk) == json.loads(json.dumps(strip(whole)))
    again = two.run(cfg)  # everything cached now
    assert again["provenance"]["computed_users"] == 0 and strip(again) == strip(whole)


def test_every_method_sees_the_same_candidates(tmp_path, synthetic_root) -> None:
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    seen = {}
    for m in ("ref-random", "ref-popularity", "ref-bm25", "ref-markov"):
        r.run(EvalConfig("amazon-games", m, n_users=10, n_candidates=10))
        partial, _ = r.paths(EvalConfig("amazon-games", m, n_users=10, n_candidates=10))
        seen[m] = {x["user"]: sorted(x["candidates"]) for x in _read_records(partial)}
    assert all(v == seen["ref-random"] for v in seen.values())
    # a larger run extends the user sample: the first 10 users are the same
    big = r.run(EvalConfig("amazon-games", "ref-random", n_users=15, n_candidates=10))
    assert big["users"][:10] == list(seen["ref-random"])


def test_llm_record_contents(tmp_path, synthetic_root, model_dir) -> None:
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    res = r.run(EvalConfig("amazon-games", "random", 2, n_users=4, model=str(model_dir), n_candidates=10))
    assert set(res["metrics"]) == {"summed", "mean", "pmi"}
    assert res["truncated_users"] == 0 and res["prompt_tokens"] > 0
    gen = r.run(
        EvalConfig("amazon-games", "zero-shot", n_users=3, model=str(model_dir), n_candidates=10,
                   mode="generate", max_new_tokens=8)
    )  # fmt: skip
    assert set(gen["metrics"]) == {"generated"} and 0 <= gen["parse_failure_rate"] <= 1


def test_item_ids_shared_across_datasets_do_not_mix(tmp_path, synthetic_root, model_dir) -> None:
    """Item ids repeat across datasets (integers); per-process caches must not confuse their titles."""
    write_synthetic(
        make_synthetic(n_users=30, n_items=60, seed=9, min_len=4, max_len=8),
        synthetic_root / "ml-100k",
        "ml-100k",
    )
    games = EvalConfig("amazon-games", "zero-shot", n_users=4, model=str(model_dir), n_candidates=10)
    movies = EvalConfig("ml-100k", "zero-shot", n_users=4, model=str(model_dir), n_candidates=10)
    both = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "both", data_dir=synthetic_root)
    both.run(games)
    both.run(movies)
    alone = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "alone", data_dir=synthetic_root)
    alone.run(movies)
    for a, b in zip(both.records(movies), alone.records(movies)):
        assert a["summed"] == b["summed"] and a["null"] == b["null"] and a["rank"] == b["rank"]

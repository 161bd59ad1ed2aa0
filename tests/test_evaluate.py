"""Tests of the evaluation runner: conditions and their validation, per-user records that are trusted only
after checking, caching keyed by the full configuration, resumption, and a selector plugged in from here."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lrgd.__main__ import main
from lrgd.errors import ConfigError
from lrgd.metrics import per_user_metrics
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import make_synthetic, write_synthetic
from lrgd.rec.rank import parse_ranked_list, tie_key
from lrgd.rec.records import RecordSchema, append_record, read_records, seal
from lrgd.rec.runner import Runner, choose_variant
from lrgd.rec.select import SELECTORS, Selection, register_selector

# ----------------------------------------------------------------------------- conditions


def test_choose_variant_pools_users() -> None:
    a = {"ranks": {"summed": [5, 5], "mean": [1, 20], "pmi": [2, 2]}}
    b = {"ranks": {"summed": [5], "mean": [20], "pmi": [2]}}
    best, pooled = choose_variant([a, b])
    assert best == "pmi" and pooled["pmi"] == pytest.approx(1 / np.log2(3))


@pytest.mark.parametrize(
    "cfg,message",
    [
        (EvalConfig("amazon-books", "random", 2), "unknown dataset 'amazon-books'"),
        (EvalConfig("amazon-games", "knn"), "unknown method 'knn'"),
        (EvalConfig("amazon-games", "zero-shot", 2), "uses no demonstrations"),
        (EvalConfig("amazon-games", "ref-bm25", 1), "takes no demonstrations"),
        (EvalConfig("amazon-games", "similarity", 0), "with k=0 is zero-shot"),
        (EvalConfig("amazon-games", "zero-shot", split="train"), "unknown split"),
        (EvalConfig("amazon-games", "zero-shot", seed=-1), "--seed must be ≥ 0, got -1"),
        (EvalConfig("amazon-games", "zero-shot", max_prompt_tokens=0), "--max-prompt-tokens must be ≥ 1"),
        (EvalConfig("amazon-games", "zero-shot", max_prompt_tokens=-5), "--max-prompt-tokens must be ≥ 1"),
        (EvalConfig("amazon-games", "zero-shot", n_candidates=1), "--candidates must be ≥ 2"),
        (EvalConfig("amazon-games", "zero-shot", n_users=0), "--users must be ≥ 1"),
        (EvalConfig("amazon-games", "zero-shot", seed=1.5), "--seed must be an integer, got 1.5"),
        (EvalConfig("amazon-games", "zero-shot", history_len=float("nan")), "--history must be an integer"),
        (EvalConfig("amazon-games", "ref-bm25", params={"bm25_k1": "x"}), "bm25_k1 must be float"),
        (EvalConfig("amazon-games", "ref-markov", params={"depth": 2}), "takes no parameter depth"),
    ],
)
def test_bad_conditions_name_the_parameter(cfg: EvalConfig, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        cfg.validate()


def test_params_are_stored_sorted_and_hashable() -> None:
    a = EvalConfig("amazon-games", "effect-global", 2, params={"effect_users": 3, "effect_pool": 4})
    b = EvalConfig("amazon-games", "effect-global", 2, params={"effect_pool": 4, "effect_users": 3})
    assert a == b and hash(a) == hash(b) and a.as_dict()["params"] == {"effect_pool": 4, "effect_users": 3}


# ----------------------------------------------------------------------------- records on disk


SCHEMA = RecordSchema(n_candidates=3, variants=("score",), targets={"a": "1", "b": "2", "c": "3"},
                      fields={"seconds": (int, float)})  # fmt: skip


def rec(user: str, rank: int = 1, **extra) -> dict:
    target = SCHEMA.targets[user]
    return {"user": user, "target": target, "candidates": ["9", target, "8"], "rank": {"score": rank},
            "seconds": 0.1, **extra}  # fmt: skip


def test_a_torn_line_in_the_middle_drops_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    append_record(path, seal(rec("a"), "K"))
    with path.open("a") as f:
        f.write('{"user": "b", "ra')  # a write cut short by an interruption
    append_record(path, seal(rec("c", 2), "K"))  # a later good record (the appender starts a new line)
    good, skipped = read_records(path, "K", SCHEMA.problem)
    assert sorted(good) == ["a", "c"] and good["c"]["rank"] == {"score": 2}
    assert skipped.as_dict() == {"torn": 1, "foreign": 0, "tampered": 0, "invalid": 0, "duplicate": 0}
    assert "1 torn" in str(skipped)
    assert path.read_text().count("\n") == 2  # rewritten without the torn line
    assert read_records(path, "K", SCHEMA.problem)[1].total == 0


def test_records_are_validated_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    good_a = seal(rec("a", 3), "K")
    edited = {**seal(rec("b", 3), "K"), "rank": {"score": 1}}  # a hand-edited rank: 3 → 1
    lines = [
        good_a,
        edited,
        seal(rec("c"), "OTHER"),  # another configuration's record
        seal(rec("c", 0), "K"),  # rank 0 (sealed, so only the schema can catch it)
        seal({k: v for k, v in rec("c").items() if k != "seconds"}, "K"),  # a missing field
        seal(rec("c", seconds=None), "K"),  # null
        seal(rec("c", 4), "K"),  # rank beyond the 3 candidates
        seal({**rec("c"), "target": "2"}, "K"),  # not the split's target
        seal({**rec("c"), "user": "zz"}, "K"),  # unknown user
        good_a,  # an identical duplicate: kept once
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines) + "NaN\n[1, 2]\n")
    good, skipped = read_records(path, "K", SCHEMA.problem)
    assert list(good) == ["a"] and good["a"]["rank"] == {"score": 3}
    assert skipped.as_dict() == {"torn": 2, "foreign": 1, "tampered": 1, "invalid": 6, "duplicate": 1}
    # two *different* valid records of one user: which is right is unknowable, both go
    path.write_text(json.dumps(seal(rec("b", 1), "K")) + "\n" + json.dumps(seal(rec("b", 2), "K")) + "\n")
    good, skipped = read_records(path, "K", SCHEMA.problem)
    assert good == {} and skipped.duplicate == 2 and path.read_text() == ""


# ----------------------------------------------------------------------------- the runner


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "provenance"}


@pytest.mark.parametrize("method,k", [("ref-markov", 0), ("random", 1)])
def test_interrupt_and_resume_gives_the_same_file(tmp_path, synthetic_root, model_dir, method, k) -> None:
    cfg = EvalConfig("amazon-games", method, k, n_users=8, model=str(model_dir), n_candidates=10)
    one = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "one", data_dir=synthetic_root)
    whole = one.run(cfg)
    two = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "two", data_dir=synthetic_root)
    stopped = two.run(cfg, stop_after=3)
    _, final = two.paths(cfg)
    assert stopped["interrupted"] and not final.exists()  # no summary before every user is done
    assert len(two.read(cfg)[0]) == 3
    resumed = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "two", data_dir=synthetic_root).run(cfg)
    assert resumed["provenance"]["computed_users"] == 5 and resumed["provenance"]["cached_users"] == 3
    assert strip(resumed) == strip(whole)
    on_disk = json.loads(final.read_text())
    assert strip(on_disk) == json.loads(json.dumps(strip(whole)))
    again = two.run(cfg)  # everything cached now
    assert again["provenance"]["computed_users"] == 0 and strip(again) == strip(whole)


def test_a_hand_edited_record_is_recomputed(tmp_path, synthetic_root, capsys) -> None:
    cfg = EvalConfig("amazon-games", "ref-popularity", n_users=10, n_candidates=10)
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    honest = r.run(cfg)
    partial, _ = r.paths(cfg)
    lines = partial.read_text().splitlines()
    worst = max(range(len(lines)), key=lambda i: max(json.loads(lines[i])["rank"].values()))
    forged = json.loads(lines[worst])
    forged["rank"] = {"score": 1}
    lines[worst] = json.dumps(forged)
    partial.write_text("\n".join(lines) + "\n")
    again = r.run(cfg)
    assert "1 tampered" in capsys.readouterr().err
    assert again["provenance"]["computed_users"] == 1 and again["metrics"] == honest["metrics"]
    assert again["provenance"]["skipped_record_lines"]["tampered"] == 1


def test_every_method_sees_the_same_candidates(tmp_path, synthetic_root) -> None:
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    seen = {}
    for m in ("ref-random", "ref-popularity", "ref-bm25", "ref-markov"):
        cfg = EvalConfig("amazon-games", m, n_users=10, n_candidates=10)
        r.run(cfg)
        seen[m] = {x["user"]: sorted(x["candidates"]) for x in r.records(cfg)}
    assert all(v == seen["ref-random"] for v in seen.values())
    # a larger run extends the user sample: the first 10 users are the same
    big = r.run(EvalConfig("amazon-games", "ref-random", n_users=15, n_candidates=10))
    assert big["users"][:10] == list(seen["ref-random"])


def test_results_of_different_conditions_never_share_a_file(tmp_path, synthetic_root) -> None:
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    base = EvalConfig("amazon-games", "ref-bm25", n_users=6, n_candidates=10)
    variants = [base, replace(base, seed=1), replace(base, n_candidates=12), replace(base, history_len=5),
                replace(base, params={"bm25_k1": 2.0})]  # fmt: skip
    finals = set()
    for cfg in variants:
        res = r.run(cfg)
        partial, final = r.paths(cfg)
        assert (
            final.is_file()
            and res["provenance"]["key"] in final.name
            and res["provenance"]["key"] in partial.name
        )
        finals.add(final)
    assert len(finals) == len(variants)
    st = r.data("amazon-games")
    prov = json.loads(r.paths(base)[1].read_text())["provenance"]
    assert prov["data_path"] == str(st.ds.source) and prov["data_fingerprint"] == st.ds.fingerprint()
    # the same condition with explicit defaults is the same result
    assert r.key(replace(base, params={"bm25_k1": 1.2, "bm25_b": 0.75})) == r.key(base)


def test_generated_ranks_follow_the_generated_text(tmp_path, synthetic_root, model_dir) -> None:
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    res = r.run(EvalConfig("amazon-games", "random", 2, n_users=4, model=str(model_dir), n_candidates=10))
    assert set(res["metrics"]) == {"summed", "mean", "pmi"} and res["truncated_users"] == 0
    cfg = EvalConfig("amazon-games", "zero-shot", n_users=3, model=str(model_dir), n_candidates=10,
                     mode="generate", max_new_tokens=8)  # fmt: skip
    gen = r.run(cfg)
    st = r.data("amazon-games")
    failed = []
    for x in r.records(cfg):
        titles = [st.ds.title(c) for c in x["candidates"]]
        named = parse_ranked_list(x["text"], titles)
        rest = sorted(
            (j for j in range(10) if j not in named), key=lambda j: tie_key(x["candidates"][j], x["user"], 0)
        )
        assert x["rank"]["generated"] == 1 + (named + rest).index(x["candidates"].index(x["target"]))
        failed.append(not named)
    assert gen["parse_failure_rate"] == np.mean(failed) and gen["mean_named"] >= 0


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


def test_named_steps_give_the_records_numbers(tmp_path, synthetic_root, model_dir) -> None:
    """user_prompt → score reproduces the runner's record (what notebooks call instead of rebuilding)."""
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    cfg = EvalConfig("amazon-games", "random", 2, n_users=2, model=str(model_dir), n_candidates=10,
                     order="reversed")  # fmt: skip
    r.run(cfg)
    for x in r.records(cfg):
        up = r.user_prompt(cfg, x["user"])
        assert list(up.candidates) == x["candidates"] and len(up.prompt.input_ids) == x["prompt_tokens"]
        assert [list(s) for s in up.shown_sources] == x["demo_sources"]
        assert up.prompt.text.count("Example ") == 2
        assert up.titles == tuple(r.data("amazon-games").ds.title(c) for c in up.candidates)
        scores = r.score(cfg, up)
        np.testing.assert_allclose(scores["summed"], x["summed"], atol=1e-5)
        np.testing.assert_allclose(scores["pmi"], np.array(x["summed"]) - x["null"], atol=2e-5)


# ----------------------------------------------------------------------------- a selector plugged in


@pytest.fixture
def toy():
    """A selector defined here, not in the library: every ``toy_stride``-th pool user, in sorted order."""

    @register_selector("toy")
    class Toy:
        toy_stride: int = 2

        def select(self, runner, cfg, user, k, history) -> Selection:
            pool = runner.pool(cfg)
            return pool.take(user, k, (pool.final(u) for u in pool.users[:: self.toy_stride]))

    yield Toy
    SELECTORS.unregister("toy")


def test_a_toy_selector_runs_through_the_runner_and_the_cli(tmp_path, synthetic_root, model_dir, toy, capsys):
    cfg = EvalConfig("amazon-games", "toy", 1, n_users=3, model=str(model_dir), n_candidates=10,
                     params={"toy_stride": 3})  # fmt: skip
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    res = r.run(cfg)
    pool = r.pool(cfg)
    every_third = [pool.final(u) for u in pool.users[::3]]
    for x in r.records(cfg):
        held = pool.held_out(x["user"])
        first_clean = next(s for s in every_third if s[0] != x["user"] and not held & set(pool.make(*s)[1]))
        assert x["demo_sources"] == [list(first_clean)]
    assert res["method_params"] == {"toy_stride": 3}
    assert r.key(cfg) != r.key(replace(cfg, params={"toy_stride": 2}))  # its parameter is in the key
    assert r.key(replace(cfg, params={})) == r.key(replace(cfg, params={"toy_stride": 2}))  # the default
    args = ["evaluate", "--dataset", "amazon-games", "--method", "toy", "--k", "1", "--toy-stride", "3",
            "--users", "3", "--candidates", "10", "--model", str(model_dir),
            "--data-dir", str(synthetic_root), "--results-dir", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "0 computed" in out  # the CLI's condition is the same result: read back, not recomputed
    assert main([*args[:8], "4", *args[9:]]) == 0 and "3 computed" in capsys.readouterr().out
    code = main(["evaluate", "--dataset", "amazon-games", "--method", "random", "--k", "1",
                 "--toy-stride", "3", "--results-dir", str(tmp_path / "x")])  # fmt: skip
    assert code == 2 and "takes no parameter toy_stride" in capsys.readouterr().err


def test_metrics_of_records_are_the_summary(tmp_path, synthetic_root) -> None:
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=synthetic_root)
    cfg = EvalConfig("amazon-games", "ref-markov", n_users=12, n_candidates=10)
    res = r.run(cfg)
    ranks = [x["rank"]["score"] for x in r.records(cfg)]
    assert res["ranks"]["score"] == ranks
    assert res["metrics"]["score"]["NDCG@10"]["mean"] == pytest.approx(
        per_user_metrics(ranks)["NDCG@10"].mean()
    )

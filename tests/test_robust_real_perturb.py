"""§4.7's real-data studies (lrgd.robust.real_perturb): stored runs are read before anything is computed,
``compute=False`` computes nothing, and the paired tables and readings say what the ranks say.

A fake runner stands in for the LLM: each condition's per-user ranks are chosen by hand, so the expected
differences are known (rank 1 everywhere vs rank 20 everywhere: NDCG@10 1 vs 0)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lrgd.config import get_profile
from lrgd.rec.rank import SCORE_VARIANTS
from lrgd.robust import real_perturb as rp

N = 30


class FakeRunner:
    """Paths like the runner's; ``run`` returns summaries whose ranks depend on the condition."""

    def __init__(self, root: Path, ranks) -> None:
        self.root, self.ranks, self.calls = root, ranks, []

    def paths(self, cfg):
        name = f"{cfg.split}-{cfg.name}-{cfg.model.replace(':', '-')}"
        return self.root / "partial" / f"{name}.jsonl", self.root / "eval" / cfg.dataset / f"{name}.json"

    def run(self, cfg):
        self.calls.append(cfg)
        ranks = [int(r) for r in self.ranks(cfg)]
        return {"users": [f"u{i}" for i in range(N)], "ranks": {v: ranks for v in (*SCORE_VARIANTS, "score")}}


def llm_ranks(cfg):
    """The clean row ranks the target first, flipped answers push it to rank 20, the rest in between."""
    if cfg.method == "perturbed" and dict(cfg.params).get("perturbation") == "flip_next":
        return np.full(N, 20)
    if cfg.method == "zero-shot" and cfg.split == "test":
        return np.where(np.arange(N) % 2 == 0, 1, 20)
    return np.ones(N)


def test_llm_check_pairs_each_row_with_the_clean_one_and_reads_the_flip(tmp_path):
    prof = get_profile("ci")
    runner = FakeRunner(tmp_path, llm_ranks)
    assert rp.llm_check(runner, prof, compute=False) is None  # nothing stored: nothing computed
    assert runner.calls == []
    chk = rp.llm_check(runner, prof, n_boot=200)
    t = chk["table"]
    flip = t.loc[f"{prof.robust.reader_llm_base}, flip_next at rate 1"]
    assert flip["NDCG@10"] == 0.0 and flip["Δ vs clean"] == -1.0 and flip["Δ hi"] < 0
    assert t.loc[chk["clean"], "NDCG@10"] == 1.0 and np.isnan(t.loc[chk["clean"], "Δ vs clean"])
    assert t.iloc[0]["Δ vs clean"] == pytest.approx(-0.5)  # zero-shot: half the users at rank 1
    assert (t["p (Holm)"].dropna() >= t["p"].dropna()).all()
    text = rp.llm_reading(chk)
    assert "flip_next at rate 1 lowers" in text and "depends on which items" in text
    assert "demonstrations is above zero-shot" in text  # k = 0 − clean is −0.5, its CI below zero


def test_llm_reading_says_when_nothing_moves(tmp_path):
    chk = rp.llm_check(FakeRunner(tmp_path, lambda cfg: np.ones(N)), get_profile("ci"), n_boot=200)
    text = rp.llm_reading(chk)
    assert "does not detectably move" in text and "no dependence on the demonstrations' content" in text
    assert "not reliably different from zero-shot" in text and "nothing to act on" not in text


def test_stored_summaries_are_read_before_the_runner_computes(tmp_path):
    prof = get_profile("ci")
    runner = FakeRunner(tmp_path, llm_ranks)
    cfgs = list(rp.llm_configs(prof).values())
    zero = cfgs[0]
    grid_copy = tmp_path / "grid" / zero.dataset / runner.paths(zero)[1].name  # the grid's published copy
    grid_copy.parent.mkdir(parents=True)
    grid_copy.write_text(json.dumps({"users": ["a"], "ranks": {"score": [1]}}))
    assert rp.stored_path(runner, zero) == grid_copy
    assert rp.fetch(runner, zero) == {"users": ["a"], "ranks": {"score": [1]}} and runner.calls == []
    assert rp.fetch(runner, cfgs[1], compute=False) is None and runner.calls == []
    rp.fetch(runner, cfgs[1])
    assert runner.calls == [cfgs[1]]


def test_llm_reading_when_demonstrations_cost_accuracy_whatever_they_say(tmp_path):
    def ranks(cfg):
        return np.where(np.arange(N) % 2 == 0, 1, 20) if cfg.method != "zero-shot" else np.ones(N)

    text = rp.llm_reading(rp.llm_check(FakeRunner(tmp_path, ranks), get_profile("ci"), n_boot=200))
    assert "is below zero-shot" in text and "nothing to act on" in text


def test_reader_curve_and_reading(tmp_path):
    """The gain falls with the flip rate and not with the history perturbations: 'from the answers'."""
    R = get_profile("ci").robust

    def ranks(cfg):
        if cfg.method == "zero-shot":
            return np.full(N, 20)
        p = dict(cfg.params)
        flip = p.get("perturbation") == "flip_next" and p.get("rate", 0) >= 0.5
        return np.full(N, 20 if flip else 1)

    runner = FakeRunner(tmp_path, ranks)
    assert rp.reader_curve(runner, R, "trained:reader-anon", compute=False) is None
    rg = rp.reader_curve(runner, R, "trained:reader-anon", n_boot=200)
    assert len(rg) == len(R.perturbations) * len(R.reader_rates)
    assert rg.attrs["n_users"] == N
    g = rg.set_index(["perturbation", "rate"])["gain over k = 0"]
    assert g[("flip_next", 1.0)] == 0.0 and g[("shuffle", 1.0)] == 1.0 and g[("flip_next", 0.0)] == 1.0
    assert "mostly from the demonstrations' answers" in rp.reader_reading(rg, R.perturbations)


def test_profiles_check_the_llm_study_sizes():
    from dataclasses import replace

    from lrgd.errors import ConfigError

    R = get_profile("ci").robust
    with pytest.raises(ConfigError, match="reader_llm_users"):
        replace(R, reader_llm_users=0).validate()
    with pytest.raises(ConfigError, match="reader_llm_perturbations"):
        replace(R, reader_llm_perturbations=()).validate()


def test_a_difference_counts_only_when_the_interval_and_the_holm_p_agree():
    row = {"Δ lo": 0.012, "Δ hi": 0.077, "p (Holm)": 0.125}  # chapter 4's ci check: CI above 0, p not < .05
    assert rp.direction(row) == 0
    assert rp.direction({**row, "p (Holm)": 0.01}) == 1
    assert rp.direction({"Δ lo": -0.2, "Δ hi": -0.1, "p (Holm)": 0.001}) == -1
    assert rp.direction({"Δ lo": -0.2, "Δ hi": 0.1, "p (Holm)": 0.001}) == 0

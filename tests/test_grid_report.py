"""Chapter 6's tables (lrgd.grid_report) on constructed summaries: best bold and second underlined, the
paired test with Holm against each group's baseline, choices made on validation users only, and a
missing run shown as a row of "—"."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lrgd import grid_report as gr
from lrgd.grid import GridTask
from lrgd.rec import report
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.rank import SCORE_VARIANTS

DATASET = "ml-100k"
LLM = "smollm2-135m"
READER = "trained:reader-anon"
N = 40  # test users


def summary(ranks, variants=("score",), users=None, commit: str = "abc123") -> dict:
    """A runner summary with the given per-user ranks under every variant named."""
    ranks = [int(r) for r in ranks]
    users = users or [f"u{i}" for i in range(len(ranks))]
    return {"ranks": {v: ranks for v in variants}, "users": users, "n_users": len(ranks),
            "provenance": {"commit": commit}}  # fmt: skip


def llm(method: str, k: int = 0, split: str = "test", n: int = N) -> GridTask:
    cfg = EvalConfig(DATASET, method, k, n_users=n, split=split, model=LLM)
    return GridTask(cfg, split, "llm")


def ref(method: str) -> GridTask:
    return GridTask(EvalConfig(DATASET, method, n_users=N), "test", "reference")


def reader(method: str, k: int, split: str) -> GridTask:
    cfg = EvalConfig(DATASET, method, k, n_users=N, split=split, model=READER, guard="own")
    return GridTask(cfg, split, "reader")


def rank_list(rng, n=N, high=20) -> np.ndarray:
    return rng.integers(1, high + 1, size=n)


def base_results(rng) -> dict:
    """A small grid: LLM zero-shot (valid + test) and random k=2, two references, the reader."""
    v = SCORE_VARIANTS
    zs = rank_list(rng)
    return {
        llm("zero-shot", split="valid", n=30): summary(rank_list(rng, 30), v),
        llm("zero-shot"): summary(zs, v),
        llm("random", 2): summary(zs, v),  # identical to zero-shot for every user
        ref("ref-popularity"): summary(np.full(N, 15)),  # the weakest baseline
        ref("ref-markov"): summary(np.full(N, 12)),
        reader("zero-shot", 0, "valid"): summary(rank_list(rng)),
        reader("zero-shot", 0, "test"): summary(rank_list(rng)),
    }


# ----------------------------------------------------------------------------- bold and underline


def test_best_two_marks_the_highest_shown_value_bold_and_the_next_underlined():
    means = pd.DataFrame({"HR@1": [0.2, 0.5, 0.4, np.nan, 0.5], "MRR": [0.30001, 0.1, 0.3, 0.2, 0.0]})
    marks = report.best_two(means)
    assert marks["HR@1"].tolist() == ["", "best", "second", "", "best"]  # a tie shares bold
    # 0.30001 and 0.3 show as 0.300: both bold; the next distinct value (0.2) is underlined
    assert marks["MRR"].tolist() == ["best", "", "best", "second", ""]


def test_styled_best_puts_bold_and_underline_on_those_cells():
    cells = pd.DataFrame({"A": ["x", "y", "z"], "note": ["a", "b", "c"]})
    means = pd.DataFrame({"A": [0.1, 0.9, 0.5]})
    html = report.styled_best(cells, means, "t-best").to_html()
    bold = [line for line in html.split("}") if "font-weight: bold" in line]
    under = [line for line in html.split("}") if "text-decoration: underline" in line]
    assert len(bold) == 1 and "#T_t-best_row1_col0" in bold[0]
    assert len(under) == 1 and "#T_t-best_row2_col0" in under[0]
    assert "col1" not in "".join(bold + under)  # a column without means is never marked


# ----------------------------------------------------------------------------- the paired test


def test_identical_row_is_not_significant_and_a_row_better_for_every_user_is():
    """Per-user ranks drawn at random: a copy of the baseline gives Δ = 0 and p = 1; a row one place
    higher for every user (so a higher NDCG@10 for every user) is significant after Holm."""
    rng = np.random.default_rng(0)
    results = base_results(rng)
    zs = rng.integers(2, 11, size=N)  # within the top 10, so one place up raises every user's NDCG@10
    results[llm("zero-shot")] = summary(zs, SCORE_VARIANTS)
    results[llm("random", 2)] = summary(zs, SCORE_VARIANTS)
    results[llm("similarity", 2)] = summary(zs - 1, SCORE_VARIANTS)
    table = gr.build_table(DATASET, results, n_boot=200)
    labels = [(r.group, r.label) for r in table.rows]
    assert table.rows[table.baselines[LLM][0]].label == "zero-shot"  # the references rank at 12 and 15
    same = table.tests[labels.index((LLM, "random, k = 2"))]
    up = table.tests[labels.index((LLM, "similarity, k = 2"))]
    assert same["diff"] == 0 and same["p"] == 1.0 and same["p_holm"] == 1.0 and gr._mark(same) == ""
    assert up["lo"] > 0 and up["p_holm"] < gr.ALPHA and gr._mark(up) == gr.BETTER
    assert len(table.tests) >= 3  # Holm ran over the table: the references are compared too


def test_holm_adjusted_marks_on_constructed_rows():
    """Baseline zero-shot (better than both references on validation and test); a row better for every
    user is marked ▲, a row worse for every user ▼, an identical row is not marked."""
    v = SCORE_VARIANTS
    zs = np.full(N, 6)
    results = {
        llm("zero-shot", split="valid", n=30): summary(np.full(30, 5), v),
        llm("zero-shot"): summary(zs, v),
        llm("random", 2): summary(zs, v),
        llm("similarity", 2): summary(zs - 4, v),
        llm("recent", 2): summary(zs + 5, v),
        ref("ref-popularity"): summary(np.full(N, 15)),
    }
    table = gr.build_table(DATASET, results, n_boot=200)
    labels = [r.label for r in table.rows]
    base_i, on = table.baselines[LLM]
    assert labels[base_i] == "zero-shot" and on == "test"  # the reference has no validation run
    same, better, worse = (
        table.tests[labels.index(f"{m}, k = 2")] for m in ("random", "similarity", "recent")
    )
    assert same["p_holm"] == 1.0 and gr._mark(same) == ""
    assert better["diff"] > 0 and better["p_holm"] < gr.ALPHA and gr._mark(better) == gr.BETTER
    assert worse["diff"] < 0 and worse["p_holm"] < gr.ALPHA and gr._mark(worse) == gr.WORSE
    # Holm over the table's three comparisons: the two smallest (equal) p-values are multiplied by 3
    assert len(table.tests) == 3
    assert better["p_holm"] == pytest.approx(3 * better["p"])
    assert worse["p_holm"] == pytest.approx(3 * worse["p"])
    cells, _ = gr.table_frames(table, n_boot=200)
    col = gr.COMPARE
    assert cells[col].iloc[base_i] == "baseline" + gr.ON_TEST
    assert cells[col].iloc[labels.index("similarity, k = 2")].split("<br>")[0].endswith(gr.BETTER)


def test_baseline_is_chosen_on_validation_when_every_candidate_has_a_validation_run():
    """Zero-shot is worse than the reference on test but better on validation: the validation choice
    wins, and it is not marked as chosen on test."""
    v = SCORE_VARIANTS
    cfg = EvalConfig(DATASET, "ref-popularity", n_users=N, split="valid")
    ref_valid = GridTask(cfg, "valid", "reference")
    results = {
        llm("zero-shot", split="valid", n=N): summary(np.full(N, 2), v),
        llm("zero-shot"): summary(np.full(N, 10), v),
        ref("ref-popularity"): summary(np.full(N, 3)),
        ref_valid: summary(np.full(N, 5)),
    }
    table = gr.build_table(DATASET, results, n_boot=100)
    i, on = table.baselines[LLM]
    assert table.rows[i].label == "zero-shot" and on == "validation"


# ----------------------------------------------------------------------------- choices on validation


def test_reader_best_selector_and_k_come_from_validation_not_test():
    rng = np.random.default_rng(1)
    results = base_results(rng)
    # validation: recent k=4 is best; test: random k=16 is far better (a test choice would pick it)
    results[reader("recent", 4, "valid")] = summary(np.full(N, 1))
    results[reader("random", 16, "valid")] = summary(np.full(N, 9))
    results[reader("recent", 4, "test")] = summary(np.full(N, 8))
    results[reader("random", 16, "test")] = summary(np.full(N, 1))
    assert gr.choose_reader(results, DATASET) == ("recent", 4)
    table = gr.build_table(DATASET, results, n_boot=100)
    best = [r for r in table.rows if r.group == "reader" and r.label.startswith("best")]
    assert [r.label for r in best] == ["best: recent, k = 4"]
    assert best[0].result["ranks"]["score"][0] == 8  # the *test* run of the validation choice


def test_llm_variant_is_chosen_on_validation_runs():
    rng = np.random.default_rng(2)
    results = base_results(rng)
    valid_task = llm("zero-shot", split="valid", n=30)
    ranks = {v: [10] * 30 for v in SCORE_VARIANTS}
    ranks["mean"] = [1] * 30  # best on validation
    results[valid_task] = {**summary(np.ones(30)), "ranks": ranks}
    test = results[llm("zero-shot")]
    test["ranks"] = {v: [1] * N for v in SCORE_VARIANTS} | {"mean": [20] * N}  # worst on test
    assert gr.choose_variants(results)[LLM] == ("mean", 1)
    table = gr.build_table(DATASET, results, n_boot=100)
    assert {r.variant for r in table.rows if r.group == LLM} == {"mean"}


# ----------------------------------------------------------------------------- missing runs


def test_a_missing_run_is_a_row_of_dashes():
    rng = np.random.default_rng(3)
    results = base_results(rng)
    results[llm("random", 2)] = None  # not published under its current key
    results[ref("ref-bm25")] = None
    table = gr.build_table(DATASET, results, n_boot=100)
    cells, means = gr.table_frames(table, n_boot=100)
    for key in ((LLM, "random, k = 2"), (gr.REFERENCES, "BM25")):
        assert key in cells.index
        assert set(cells.loc[key]) == {"—"} and means.loc[key].isna().all()
    # the reader's best row without any validation run is also present, as dashes
    key = ("reader", "best (selector, k)")
    assert set(cells.loc[key]) == {"—"}


def test_no_validation_run_leaves_the_llm_rows_empty_instead_of_choosing_on_test():
    rng = np.random.default_rng(4)
    results = base_results(rng)
    results[llm("zero-shot", split="valid", n=30)] = None
    table = gr.build_table(DATASET, results, n_boot=100)
    cells, _ = gr.table_frames(table, n_boot=100)
    assert set(cells.loc[LLM].to_numpy().ravel()) == {"—"}
    assert any("no validation run" in n for n in table.notes)


@pytest.mark.parametrize("profile", ["ci", "full"])
def test_every_test_task_of_a_profile_is_a_row(profile):
    """Nothing published: one row per test task (the reader: k = 0 and its best), all dashes."""
    from lrgd.grid import grid_tasks

    tasks = grid_tasks(profile)
    results = {t: None for t in tasks}
    for name in dict.fromkeys(t.cfg.dataset for t in tasks if t.role == "test"):
        table = gr.build_table(name, results, n_boot=10)
        tests = [t for t in tasks if t.role == "test" and t.cfg.dataset == name]
        n_reader = 2 if any(t.kind == "reader" for t in tests) else 0
        n_reader += sum(t.kind == "reader" and t.cfg.method in gr.SHOWN_READER_METHODS for t in tests)
        assert len(table.rows) == sum(t.kind != "reader" for t in tests) + n_reader
        cells, _ = gr.table_frames(table, n_boot=10)
        assert set(cells.to_numpy().ravel()) == {"—"}


def test_tally_counts_each_group_across_tables():
    v = SCORE_VARIANTS
    zs = np.full(N, 6)
    results = {
        llm("zero-shot", split="valid", n=30): summary(np.full(30, 5), v),
        llm("zero-shot"): summary(zs, v),
        llm("random", 2): summary(zs, v),
        llm("similarity", 2): summary(zs - 4, v),
        llm("recent", 2): None,
        ref("ref-popularity"): summary(np.full(N, 15)),
    }
    table = gr.build_table(DATASET, results, n_boot=100)
    counts = gr.tally([table, table])
    assert counts.loc[LLM].tolist() == [8, 6, 2, 0, 2]  # zero-shot is the baseline; recent is missing
    assert counts.loc[gr.REFERENCES].tolist() == [2, 2, 0, 0, 0]


def test_forest_draws_each_published_row_at_its_mean_and_leaves_out_missing_rows():
    import matplotlib

    matplotlib.use("Agg")
    rng = np.random.default_rng(5)
    results = base_results(rng)
    results[llm("random", 2)] = None
    table = gr.build_table(DATASET, results, n_boot=100)
    fig = gr.forest([table], n_boot=100)
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert f"{LLM} · random, k = 2" not in shown and f"{LLM} · zero-shot" in shown
    assert "reader · best (selector, k)" not in shown  # no validation run: no best row to draw
    _, means = gr.table_frames(table, n_boot=100)
    want = {f"{g} · {lab}": m for (g, lab), m in means["NDCG@10"].items() if not np.isnan(m)}
    assert shown == list(want)  # the tables' order
    line = ax.lines[0]  # the one dataset's markers, one per shown row
    assert np.allclose(line.get_xdata(), list(want.values()))
    assert np.allclose(line.get_ydata(), range(len(want)))


def test_compute_seconds_sums_users_times_their_measured_seconds():
    rng = np.random.default_rng(6)
    results = {llm("zero-shot"): summary(rank_list(rng)), ref("ref-markov"): summary(rank_list(rng)),
               llm("random", 2): None}  # fmt: skip
    results[llm("zero-shot")]["provenance"].update(seconds_per_user=2.0, null_seconds_per_user=1.0)
    results[ref("ref-markov")]["provenance"].update(seconds_per_user=0.5)
    assert gr.compute_seconds(results) == pytest.approx(N * 3.0 + N * 0.5)


def test_the_readers_effect_d_row_is_shown_and_tested_against_the_readers_baseline():
    rng = np.random.default_rng(7)
    results = base_results(rng)
    results[reader("reader-effect", 16, "test")] = summary(rank_list(rng))
    table = gr.build_table(DATASET, results, n_boot=100)
    labels = [(r.group, r.label) for r in table.rows]
    i = labels.index(("reader", "Effect_D per user, k = 16"))
    assert table.rows[i].ready and not table.rows[i].plain  # a demonstration row, never a baseline
    assert i in table.tests and table.baselines["reader"][0] != i

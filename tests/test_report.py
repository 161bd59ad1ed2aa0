"""Tests of lrgd.rec.report: chapter 2's cells, the validation choice of a best row, Holm in a table."""

from __future__ import annotations

import numpy as np
import pytest

from lrgd.rec.report import best_method, ci_text, in_words, paired, styled, verdict, with_holm


def result(ranks: list[int], variant: str = "pmi") -> dict:
    """A runner summary holding only what the report reads: users, ranks and NDCG@10 means."""
    ndcg = [1 / np.log2(r + 1) if r <= 10 else 0.0 for r in ranks]
    return {
        "users": [f"u{i}" for i in range(len(ranks))],
        "ranks": {variant: ranks},
        "metrics": {variant: {"NDCG@10": {"mean": float(np.mean(ndcg)), "lo": 0.0, "hi": 1.0}}},
    }


def test_ci_text() -> None:
    assert ci_text({"mean": 0.51234, "lo": 0.4049, "hi": 0.6251}) == "0.512 [0.40, 0.63]"


def test_best_method_reads_each_rows_variant_and_breaks_ties_by_order() -> None:
    rows = {"ref-a": result([3, 3], "score"), "ref-b": result([1, 1], "score"), "llm": result([2, 2])}
    assert best_method(rows, lambda m: "score" if m.startswith("ref-") else "pmi") == "ref-b"
    tied = {"x": result([2, 5]), "y": result([5, 2])}  # same mean NDCG: the earlier key wins
    assert best_method(tied, lambda m: "pmi") == "x"


def test_paired_difference_and_verdict() -> None:
    a, b = result([1] * 20), result([11] * 20)  # a always hits at rank 1, b always misses @10
    d = paired(a, b, "pmi", "pmi", n_boot=200, seed=0)
    assert d["diff"] == pytest.approx(1.0) and d["lo"] == pytest.approx(1.0)
    assert d["p"] <= 1 / 10000 * (1 + 1e-9)  # no sign flip reaches a constant difference
    assert verdict(d) == "gain" and verdict({"lo": -0.2, "hi": -0.1}) == "loss"
    assert verdict({"lo": -0.1, "hi": 0.1}) == "no detectable change"
    loss = {"diff": -0.1, "lo": -0.2, "hi": -0.01, "p": 0.02}
    assert in_words(loss) == "loss (ΔNDCG@10 -0.100 [-0.200, -0.010], p 0.020)"
    adjusted = in_words(loss, 0.08, "p (Holm)")
    assert adjusted.endswith("p (Holm) 0.080 — not significant by the permutation test)")
    shifted = dict(b, users=b["users"][::-1])
    with pytest.raises(ValueError, match="same users"):
        paired(a, shifted, "pmi", "pmi", n_boot=200, seed=0)


def test_with_holm_adjusts_within_the_table() -> None:
    rows = [
        {"comparison": "a", "diff": 0.1, "lo": 0.0, "hi": 0.2, "p": 0.01},
        {"comparison": "b", "diff": 0.1, "lo": 0.0, "hi": 0.2, "p": 0.04},
        {"comparison": "c", "diff": 0.1, "lo": 0.0, "hi": 0.2, "p": 0.5},
    ]
    df = with_holm(rows)
    # by hand: sorted 0.01, 0.04, 0.5 → 3·0.01, max(0.03, 2·0.04), max(0.08, 1·0.5)
    assert list(df["p"]) == ["0.010", "0.040", "0.500"]
    assert list(df["p (Holm)"]) == ["0.030", "0.080", "0.500"]
    assert list(df.columns[:4]) == ["comparison", "ΔNDCG@10", "CI low", "CI high"]


def test_styled_is_reproducible_html() -> None:
    df = with_holm([{"comparison": "a", "diff": 0.12345, "lo": 0.0, "hi": 0.2, "p": 0.01}])
    html = styled(df, "t1", "caption", formats={"CI high": "{:.1f}"}).to_html()
    assert html == styled(df, "t1", "caption", formats={"CI high": "{:.1f}"}).to_html()
    assert "T_t1" in html and ">0.123<" in html and ">0.2<" in html and "caption" in html

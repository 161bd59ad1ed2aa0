"""Chapter 2's tables and sentences: runner results → formatted cells, styled tables, and paired
comparisons with permutation p-values, Holm-adjusted within each table.

A result is the summary dict of :meth:`lrgd.rec.runner.Runner.run`: ``result["ranks"][variant]`` [n]
holds the target's rank per user, ``result["metrics"][variant][metric]`` ``{mean, lo, hi}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lrgd.metrics import format_p, holm, paired_bootstrap, per_user_metrics


def ci_text(x: dict[str, float], digits: int = 3) -> str:
    """``{mean, lo, hi}`` → ``"0.512 [0.41, 0.62]"`` (the interval with one digit fewer)."""
    return f"{x['mean']:.{digits}f} [{x['lo']:.{digits - 1}f}, {x['hi']:.{digits - 1}f}]"


def per_user(result: dict, variant: str, metric: str = "NDCG@10") -> np.ndarray:
    """Per-user values [n] of ``metric`` under score ``variant`` (``"score"`` for references)."""
    return per_user_metrics(result["ranks"][variant], (metric,))[metric]


def best_method(results: dict[str, dict], variant_of, metric: str = "NDCG@10") -> str:
    """The method (key of ``results``) with the highest mean ``metric``; ties go to the earlier key.

    ``variant_of(method)`` names the score variant to read. Pass validation results, never the test
    results the winner is then compared on.
    """
    means = {m: r["metrics"][variant_of(m)][metric]["mean"] for m, r in results.items()}
    return max(means, key=lambda m: (means[m], -list(means).index(m)))


def paired(a: dict, b: dict, var_a: str, var_b: str, n_boot: int, seed: int, metric: str = "NDCG@10") -> dict:
    """Paired comparison of result ``a`` minus result ``b`` on the same users and candidates:
    ``{diff, lo, hi, p}`` (bootstrap CI, sign-flip permutation p; :func:`lrgd.metrics.paired_bootstrap`)."""
    if a["users"] != b["users"]:
        raise ValueError("a paired comparison needs the same users in the same order")
    return paired_bootstrap(per_user(a, var_a, metric), per_user(b, var_b, metric), n_boot, seed)


def with_holm(rows: Sequence[dict]) -> pd.DataFrame:
    """Rows ``{..., diff, lo, hi, p}`` of one table → a DataFrame with the raw p and the Holm-adjusted p
    (over every row of this table), both as text (:func:`lrgd.metrics.format_p`)."""
    df = pd.DataFrame(list(rows))
    adjusted = holm(df["p"].to_numpy(dtype=float))
    df["p (Holm)"] = [format_p(p) for p in adjusted]
    df["p"] = [format_p(p) for p in df["p"]]
    return df.rename(columns={"diff": "ΔNDCG@10", "lo": "CI low", "hi": "CI high"})


def verdict(d: dict) -> str:
    """A paired difference's bootstrap CI in words: gain, loss, or no detectable change."""
    return "gain" if d["lo"] > 0 else ("loss" if d["hi"] < 0 else "no detectable change")


def in_words(d: dict, p: float | None = None, p_name: str = "p") -> str:
    """A paired difference in words (by its 95% interval) with its numbers and p-value.

    ``p`` replaces ``d["p"]`` (e.g. the Holm-adjusted one, named ``p_name``). When the interval excludes
    zero but ``p`` ≥ 0.05, the sentence says that the permutation test does not confirm it.
    """
    p = d["p"] if p is None else p
    weak = " — not significant by the permutation test" if d["lo"] * d["hi"] > 0 and p >= 0.05 else ""
    numbers = f"ΔNDCG@10 {d['diff']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}], {p_name} {format_p(p)}"
    return f"{verdict(d)} ({numbers}{weak})"


def styled(
    df: pd.DataFrame,
    uuid: str,
    caption: str | None = None,
    precision: int = 3,
    formats: dict[str, str] | None = None,
):
    """``df`` as an HTML table (pandas Styler) with a fixed id, so that re-executions render identically.

    Floats get ``precision`` decimals, missing values "—"; ``formats`` (column → format string, e.g.
    ``{"density %": "{:.3f}"}``) overrides single columns.
    """
    sty = df.style.set_uuid(uuid).format(precision=precision, na_rep="—")
    for column, fmt in (formats or {}).items():  # one call per column: a dict would reset the others
        sty = sty.format(fmt, subset=[column], na_rep="—")
    return sty.set_caption(caption) if caption else sty


#: how :func:`styled_best` marks the best and the second value of a column
BEST_CSS = {"best": "font-weight: bold", "second": "text-decoration: underline"}


def best_two(means: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Per column of ``means`` [rows, columns]: ``"best"`` where the value, rounded to ``digits`` as the
    page shows it, is the column's highest, ``"second"`` at the next distinct value, ``""`` elsewhere
    (NaN is never marked; equal shown values get the same mark, as in the paper's tables).

    >>> best_two(pd.DataFrame({"a": [0.5, 0.7, 0.6, float("nan")]}))["a"].tolist()
    ['', 'best', 'second', '']
    """
    out = pd.DataFrame("", index=means.index, columns=means.columns)
    for col in means.columns:
        shown = means[col].astype(float).round(digits)
        top = sorted(set(shown.dropna()), reverse=True)[:2]
        for mark, value in zip(("best", "second"), top):
            out.loc[(shown == value).to_numpy(), col] = mark
    return out


def styled_best(
    cells: pd.DataFrame, means: pd.DataFrame, uuid: str, caption: str | None = None, digits: int = 3
):
    """:func:`styled` table of text ``cells`` whose columns shared with ``means`` (numeric, same index)
    get the best value in bold and the second underlined (:func:`best_two`)."""
    css = best_two(means, digits).replace(BEST_CSS)
    css = css.reindex(columns=cells.columns, fill_value="")
    return styled(cells, uuid, caption).apply(lambda _: css, axis=None)

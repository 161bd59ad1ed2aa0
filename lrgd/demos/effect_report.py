"""Chapter 3's tables and sentences: correlations of [M, N] pair matrices (over all pairs and within
users), the ablation and selection tables, and the readings, built from the numbers they interpret (so a
sentence stays true at every profile, model and dataset).

Nothing here computes a model pass; the numbers come from :mod:`lrgd.demos.testbed_effect` (§3.3),
:mod:`lrgd.demos.effect_study` (§3.4) and chapter 2's runner (§3.5).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lrgd.metrics import (
    holm,
    paired_bootstrap,
    per_user_metrics,
    spearman,
    spearman_matrix_ci,
    within_user_spearman_ci,
)

# ----------------------------------------------------------------------------- correlations


def ci_words(lo: float, hi: float) -> str:
    """A 95% interval in words: above zero, below zero, or spanning zero."""
    return "above zero" if lo > 0 else ("below zero" if hi < 0 else "spanning zero")


def _rho(row: pd.Series, within: bool = False) -> str:
    if within:
        return f"{row['within-user ρ']:.2f} [{row['w. CI low']:.2f}, {row['w. CI high']:.2f}]"
    return f"{row['Spearman ρ']:.2f} [{row['CI low']:.2f}, {row['CI high']:.2f}]"


def correlation_table(pairs: dict[str, tuple[np.ndarray, np.ndarray]], n_boot: int = 1000, seed: int = 0):
    """Spearman ρ of each named pair of [M, N] matrices (demonstrations × users), two ways:

    * over all M·N pairs, with a 95% CI from resampling users (:func:`lrgd.metrics.spearman_matrix_ci`);
    * within each user (ρ over the M demonstrations of one user), averaged over users, with a bootstrap CI
      over users (:func:`lrgd.metrics.within_user_spearman_ci`) — what a per-user selector needs, because
      pairs of one user share that user's baseline loss.
    """
    rows = {}
    for name, (a, b) in pairs.items():
        rho, lo, hi = spearman_matrix_ci(a, b, n_boot, seed)
        w, wlo, whi = within_user_spearman_ci(a, b, n_boot, seed)
        rows[name] = {"Spearman ρ": rho, "CI low": lo, "CI high": hi, "within-user ρ": w, "w. CI low": wlo,
                      "w. CI high": whi}  # fmt: skip
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------- §3.3: testbed B


def testbed_correlation_reading(corr: pd.DataFrame) -> str:
    """§3.3's first reading, from :func:`lrgd.demos.effect_study.correlation_table` of the three pairs."""

    def says(name: str) -> str:
        r = corr.loc[name]
        where = ci_words(r["CI low"], r["CI high"])
        return (
            f"ρ = {r['Spearman ρ']:.2f} [{r['CI low']:.2f}, {r['CI high']:.2f}] "
            f"({where}; within a user {r['within-user ρ']:.2f})"
        )

    return (
        f"Effect_D against the decoder's own true gain: {says('Effect_D vs true gain')}; against the Bayes "
        f"usefulness: {says('Effect_D vs usefulness')}; the true gain against usefulness: "
        f"{says('true gain vs usefulness')}. Effect_D approximates the true gain by construction (to first "
        "order), while usefulness is what the Bayes observer would gain: the decoder is not that observer, "
        "and one sampled next item is a noisy target."
    )


VS_RANDOM = {
    "above zero": "beats random",
    "below zero": "is worse than random",
    "spanning zero": "is not distinguishable from random",
}


def testbed_selection_reading(table: pd.DataFrame, val_self: np.ndarray, usefulness: np.ndarray) -> str:
    """§3.3's selection reading, from :func:`selection_table` and the validation-step Effect_D."""

    def vs_random(name: str) -> str:
        r = table.loc[name]
        return VS_RANDOM[ci_words(r["Δ CI low"], r["Δ CI high"])]

    peek, oracle = table.loc["Effect_D on the held-out item (peeks)"], table.loc["oracle usefulness"]
    rho = spearman(val_self, usefulness)
    legal = [vs_random("Effect_D per user (validation step)"), vs_random("Effect_D global")]
    text = (
        f"**Reading.** Computed on the held-out item (which no real selector may see), Effect_D's choice "
        f"{vs_random('Effect_D on the held-out item (peeks)')} (paired ΔNDCG@10 {peek['Δ vs random']:+.3f}) "
        f"and scores {'above' if peek['decoder NDCG@10'] > oracle['decoder NDCG@10'] else 'at or below'} "
        f"the oracle's usefulness ranking (NDCG@10 {peek['decoder NDCG@10']:.3f} vs "
        f"{oracle['decoder NDCG@10']:.3f}): it measures the gain on that very item. The legal selectors: "
        f"per-user Effect_D on the validation step {legal[0]}, the global ranking {legal[1]}; the "
        f"validation-step Effect_D correlates with the true usefulness at ρ = {rho:+.2f}."
    )
    if "beats random" not in legal[0]:
        text += (
            " A reason lies in the world's design (chapter 1b): a user's history items are drawn towards the "
            "cluster centre and carry little information about the user's group, so a demonstration that "
            "raises the probability of the last history item need not be one that reveals the group. A legal "
            "per-user Effect_D needs a validation target that reflects the user's preference (on real data "
            "the second-to-last purchase): a limit of the testbed's validation signal, reported as measured."
        )
    return text


# ----------------------------------------------------------------------------- §3.4: a real LLM


RANK_WORDS = {
    "above zero": "positive",
    "below zero": "negative",
    "spanning zero": "not distinguishable from zero",
}


def llm_reading(abl: pd.DataFrame, gain: np.ndarray, effect: np.ndarray) -> str:
    """§3.4's reading, from :func:`correlation_table` of every score against the true gain (rows
    ``Effect_D`` and its ablations) and the matrices [M, N] of the true gain and Effect_D.

    Ablations are compared with Effect_D on the within-user ρ, the quantity a selector uses: an ablation
    whose interval lies below (above) Effect_D's ρ ranks clearly worse (better)."""
    e = abl.loc["Effect_D"]
    helps = float((gain > 0).mean())
    most = "*raise* the loss" if helps < 0.5 else "*lower* the loss"
    pooled, within = ci_words(e["CI low"], e["CI high"]), ci_words(e["w. CI low"], e["w. CI high"])
    text = (
        f"**Reading.** In this run most demonstrations {most} ({helps:.0%} of the {gain.size} pairs help). "
        f"Effect_D's rank correlation with the true gain is {RANK_WORDS[within]} within a user, "
        f"ρ = {_rho(e, True)}, and {RANK_WORDS[pooled]} over all pairs, ρ = {_rho(e)}. Its mean is "
        f"{effect.mean():+.3f} against a mean true gain of {gain.mean():+.3f} nats: read it as a ranking, "
        "not a calibrated prediction."
    )
    others = [n for n in abl.index if n != "Effect_D"]
    groups = {
        "rank clearly worse (interval below Effect_D's within-user ρ)": [
            n for n in others if abl.loc[n, "w. CI high"] < e["within-user ρ"]
        ],
        "rank clearly better (interval above it)": [
            n for n in others if abl.loc[n, "w. CI low"] > e["within-user ρ"]
        ],
    }
    groups["cannot be told apart from it at this size"] = [
        n for n in others if not any(n in g for g in groups.values())
    ]
    said = [f"{', '.join(names)} {words}" for words, names in groups.items() if names]
    return text + (f" Of the ablations, {'; '.join(said)}." if said else "")


# ---------------------------------------------------------------- §3.5: selection through chapter 2's runner


SUMMARY_METRICS = ("NDCG@10", "HR@10", "MRR")


def condition_table(results: dict[str, dict], variant: str) -> pd.DataFrame:
    """One row per condition: NDCG@10, HR@10 and MRR as ``mean [CI]`` under ``variant``, and the number of
    demonstrations filled in at random because the selector ran out."""
    rows = {}
    for name, r in results.items():
        m = r["metrics"][variant]
        rows[name] = {
            k: f"{m[k]['mean']:.3f} [{m[k]['lo']:.2f}, {m[k]['hi']:.2f}]" for k in ("NDCG@10", "HR@10", "MRR")
        }
        rows[name]["fallback demos"] = r.get("fallback_demos", 0)
    return pd.DataFrame(rows).T


def paired_table(
    results: dict[str, dict], pairs: list[tuple[str, str]], variant: str, n_boot: int, seed: int = 0
) -> pd.DataFrame:
    """Paired NDCG@10 differences ``a − b`` on the same users: bootstrap CI, sign-flip permutation p
    (:func:`lrgd.metrics.paired_bootstrap`) and the Holm-adjusted p over the rows of this table."""
    rows = {}
    for a, b in pairs:
        va, vb = (per_user_metrics(results[x]["ranks"][variant], ("NDCG@10",))["NDCG@10"] for x in (a, b))
        rows[f"{a} − {b}"] = paired_bootstrap(va, vb, n_boot, seed)
    df = pd.DataFrame(rows).T.rename(columns={"diff": "ΔNDCG@10", "lo": "CI low", "hi": "CI high"})
    df["p (Holm)"] = holm(df["p"].to_numpy(dtype=float))
    return df


def chosen_effects(records: list[dict]) -> np.ndarray:
    """Effect_D (on the validation item) of every demonstration the Effect_D selectors chose, from the
    per-user records (fallback demonstrations, which have none, are left out)."""
    return np.array([e for r in records for e in (r.get("effect") or ()) if e is not None], dtype=float)


def selection_reading(means: dict[str, float], diffs: pd.DataFrame, effects: np.ndarray, n_users: int) -> str:
    """§3.5's reading, from the NDCG@10 means per condition, the paired differences (rows ``a − b`` with
    ``ΔNDCG@10``, ``CI low``, ``CI high``) and the chosen demonstrations' Effect_D on validation items."""
    zero = means["zero-shot"]
    below = [n for n in means if n != "zero-shot" and means[n] < zero]
    others = len(means) - 1
    if len(below) == others:
        lead = "every condition with demonstrations sits *below* zero-shot in mean NDCG@10"
    elif not below:
        lead = "every condition with demonstrations sits *above* zero-shot in mean NDCG@10"
    else:
        lead = f"{len(below)} of {others} conditions with demonstrations sit below zero-shot in mean NDCG@10"
    rows = [
        f"{name}: {r['ΔNDCG@10']:+.3f} [{r['CI low']:+.3f}, {r['CI high']:+.3f}], "
        + ci_words(r["CI low"], r["CI high"])
        for name, r in diffs.iterrows()
    ]
    positive = float((effects > 0).mean()) if len(effects) else float("nan")
    return (
        f"**Reading.** With {n_users} test users, {lead}. Paired differences in NDCG@10 (95% CI): "
        + "; ".join(rows)
        + f". Of the demonstrations the Effect_D selectors chose, {positive:.0%} had a positive Effect_D on "
        "the user's validation item (the records keep the values), so the selector did what it was asked; "
        "whether that carries over to the test item is what the differences above measure."
    )

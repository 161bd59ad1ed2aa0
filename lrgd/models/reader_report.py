"""Chapter 2b: what the reader gains from its demonstrations, against what they could give (the vote).

Every number comes from :meth:`lrgd.rec.runner.Runner.run` on chapter 2's protocol (same users, same saved
candidates), so it is cached and resumable. The reader's demonstrations use the ``own`` guard (only the
user's own sequence is refused; :data:`lrgd.rec.select.GUARDS`), the guard of the vote ceiling, so the
reader and the vote read the same demonstrations.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lrgd.metrics import holm
from lrgd.rec import report
from lrgd.rec.ceiling import vote_config
from lrgd.rec.conditions import EvalConfig


def gain_table(
    runner,
    model: str,
    datasets: Sequence[str],
    selectors: Sequence[str],
    ks: Sequence[int],
    n_users: int | None,
    seed: int = 0,
    split: str = "test",
) -> pd.DataFrame:
    """One row per (dataset, selector, k ≥ 1): the reader's NDCG@10, its in-context gain over its own
    k = 0 (paired ΔNDCG@10, 95% CI, permutation p, Holm over the table), the vote's gain over popularity
    with the same selector and k (the ceiling of that row), and ``share`` = gain / vote gain (point
    estimates; NaN where the vote gains nothing)."""
    n_boot, rows = runner.preset.n_boot, []
    for name in datasets:
        base = {"n_users": n_users, "seed": seed, "split": split}
        zero = runner.run(EvalConfig(name, "zero-shot", 0, model=model, guard="own", **base))
        pop = runner.run(EvalConfig(name, "ref-popularity", **base))
        for sel in selectors:
            for k in ks:
                res = runner.run(EvalConfig(name, sel, k, model=model, guard="own", **base))
                vote = runner.run(vote_config(name, sel, k, n_users, seed, guard="own", split=split))
                d = report.paired(res, zero, "score", "score", n_boot, seed)
                v = report.paired(vote, pop, "score", "score", n_boot, seed)
                m = res["metrics"]["score"]["NDCG@10"]
                rows.append({
                    "dataset": name, "selector": sel, "k": k, "n_users": res["n_users"],
                    "NDCG@10": m["mean"], "NDCG@10 lo": m["lo"], "NDCG@10 hi": m["hi"],
                    "k=0 NDCG@10": zero["metrics"]["score"]["NDCG@10"]["mean"],
                    "gain": d["diff"], "gain lo": d["lo"], "gain hi": d["hi"], "p": d["p"],
                    "vote gain": v["diff"], "vote gain lo": v["lo"], "vote gain hi": v["hi"],
                    "share": d["diff"] / v["diff"] if v["diff"] > 0 else float("nan"),
                })  # fmt: skip
    df = pd.DataFrame(rows)
    df["p (Holm)"] = holm(df["p"].to_numpy(dtype=float)) if len(df) else []
    return df


#: how the figure names a selector (the runner's ``perturbed`` at its defaults: recent, every answer flipped)
LABELS = {"recent": "recent (transitions)", "perturbed": "corrupted (answers flipped)"}


def gain_figure(df: pd.DataFrame):
    """In-context gain (ΔNDCG@10 over k = 0, 95% CI) against k, one panel per dataset, one line per
    selector; the vote's gain over popularity with the same selector dashed. Returns the Figure."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, len(names), figsize=(3.4 * len(names), 3.3), squeeze=False, sharey=True)
    for ax, name in zip(axes[0], names):
        for j, (sel, g) in enumerate(df[df["dataset"] == name].groupby("selector", sort=False)):
            g = g.sort_values("k")
            color, label = f"C{j}", LABELS.get(sel, sel)
            ax.errorbar(g["k"], g["gain"], yerr=[g["gain"] - g["gain lo"], g["gain hi"] - g["gain"]],
                        fmt="o-", ms=3, capsize=2, color=color, label=f"reader, {label}")  # fmt: skip
            ax.plot(g["k"], g["vote gain"], "--", color=color, lw=1, label=f"vote, {label}")
        ax.axhline(0, color="k", lw=0.7)
        ax.set_xscale("log", base=2)
        ax.set(title=name, xlabel="demonstrations k", ylabel="ΔNDCG@10 vs k = 0")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def training_figure(log: dict):
    """The training log: loss every 50 steps (left) and the held-out loss per catalogue and k (right)."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.3))
    steps, loss = zip(*log["loss"], strict=True) if log["loss"] else ((), ())
    a.plot(steps, loss, lw=1)
    a.set(xlabel="step", ylabel="training cross-entropy", title="training loss (50-step means)")
    a.axhline(np.log(20), color="k", ls=":", lw=0.8, label="chance (ln 20)")
    a.legend(fontsize=7)
    series: dict[str, list] = {}
    for step, losses in log["heldout"]:
        for name, v in losses.items():
            series.setdefault(name, []).append((step, v))
    for name, pts in series.items():
        s, v = zip(*pts, strict=True)
        b.plot(s, v, "o-", ms=2, lw=1, label=name)
    b.axhline(np.log(20), color="k", ls=":", lw=0.8)
    b.set(xlabel="step", ylabel="cross-entropy", title="held-out users (fixed prompts)")
    b.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    return fig

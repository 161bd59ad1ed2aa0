"""Chapter 2b: the information ceiling of demonstrations on real data.

How much can k demonstrations tell a recommender about a user's next item at all? No model reads them
here: each demonstration votes for its next item and the candidates are ranked by votes, popularity
breaking ties (``ref-vote``, :class:`lrgd.rec.references.VoteReference`). Against popularity
(what a model knows with no demonstration and no history) and first-order Markov (every training
user's transitions from the query's last item), the vote says what any model could gain from the
demonstrations a selector gives it — by copying their next items; a model that generalises from
similar items could gain more.

The selectors are chapter 2's (:mod:`lrgd.rec.select`). Its ``recent`` selector is the issue's
*transition* selector: other users' training windows ending at the query's most recent item, then at
earlier items, with random fill counted (``random fill share``).

The ceiling's guard refuses only the user's own sequence (``guard="own"``): other users' transitions
into the user's target are collaborative evidence, as in Markov. Chapter 2's leakage guard
(``guard="held-out"``, what an LLM prompt gets) refuses every demonstration showing the user's valid or
test item, so the target never gets a vote and the guarded vote is never above popularity;
:func:`llm_capture` reports both.

Everything runs through :meth:`lrgd.rec.runner.Runner.run` on chapter 2's protocol (the same users, the
same saved 20 candidates: the target and 19 uniform unseen items), so results are cached and resumable
under ``results/<profile>/``. The share of users whose target is among the demonstrations' next items
is not part of a reference record; :func:`demo_hits` computes it from the same selections and caches it
under ``results/<profile>/ceiling/``.

>>> runner = Runner("ci")  # doctest: +SKIP
>>> df = ceiling_grid(runner, runner.profile.ceiling)
>>> ceiling_pivot(df)  # dataset × (selector, k) → ΔNDCG@10 vs popularity [95% CI]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from lrgd.config import CeilingSizes
from lrgd.metrics import format_p, holm, paired_bootstrap
from lrgd.progress import progress
from lrgd.rec import report
from lrgd.rec.conditions import EvalConfig
from lrgd.results import cached_json

#: the reference rows of the ceiling table (k = 0)
REFERENCE_ROWS = ("ref-popularity", "ref-markov")
METRICS = ("NDCG@10", "HR@10")
#: the vote rows' columns about their demonstrations (NaN for the reference rows)
HIT_COLUMNS = ("target among next items", "mean target votes", "random fill share")


def vote_config(
    dataset: str, selector: str, k: int, n_users: int | None, seed: int = 0, guard: str = "own", **kw
) -> EvalConfig:
    """The ``ref-vote`` condition: ``k`` demonstrations of ``selector`` vote (``guard``: ``own`` for the
    ceiling, ``held-out`` for the demonstrations an LLM prompt gets; :data:`lrgd.rec.select.GUARDS`)."""
    params = {"vote_selector": selector, "vote_k": k}
    return EvalConfig(dataset, "ref-vote", n_users=n_users, seed=seed, guard=guard, params=params, **kw)


def demo_hits(runner, cfg: EvalConfig) -> dict[str, list[int]]:
    """Per user of ``cfg`` (a ``ref-vote`` condition), in user order: ``hits`` [n], how many of the
    demonstrations' next items are the user's target, and ``fallback`` [n], how many demonstrations
    were filled in at random. Cached under ``results/<profile>/ceiling/`` by the condition's key."""
    if cfg.method != "ref-vote":
        raise ValueError(f"demo_hits needs a ref-vote condition, got {cfg.method!r}")
    key = runner.key(cfg)
    users = runner.users(cfg)
    n = "all" if cfg.n_users is None else f"n{cfg.n_users}"
    path = runner.root / "ceiling" / cfg.dataset / f"{cfg.name}-hits-{n}-{key}.json"

    def compute() -> dict[str, list[int]]:
        vote = runner.method(cfg)
        hits, fallback = [], []
        for u in users:
            hist, target = runner.target(cfg, u)
            nxt, fill = vote.next_items(runner, cfg, u, hist)
            hits.append(sum(i == target for i in nxt))
            fallback.append(fill)
        return {"users": users, "hits": hits, "fallback": fallback}

    result, _ = cached_json(path, {"vote": key, "users": users}, compute)
    return result


# ----------------------------------------------------------------------------- the grid


def grid_configs(
    sizes: CeilingSizes, seed: int = 0, guard: str = "own", split: str = "test"
) -> list[EvalConfig]:
    """Every condition of the ceiling grid: per dataset, the reference rows, then selector × k votes
    (``sizes.n_users`` test users, or ``sizes.n_valid_users`` on the ``valid`` split)."""
    n = sizes.n_valid_users if split == "valid" else sizes.n_users
    out = []
    for name in sizes.datasets:
        out += [EvalConfig(name, m, n_users=n, seed=seed, split=split) for m in REFERENCE_ROWS]
        for sel in sizes.selectors:
            out += [vote_config(name, sel, k, n, seed, guard, split=split) for k in sizes.ks]
    return out


def _row(runner, cfg: EvalConfig, res: dict, pop: dict, seed: int) -> dict:
    """One tidy row: metrics with CIs, the paired ΔNDCG@10 vs popularity, the demonstrations' hits."""
    params = dict(cfg.params)
    vote = cfg.method == "ref-vote"
    row = {
        "dataset": cfg.dataset,
        "method": cfg.method.removeprefix("ref-"),
        "selector": params["vote_selector"] if vote else "—",
        "k": params["vote_k"] if vote else 0,
        "guard": cfg.guard if vote else "—",
        "n_users": res["n_users"],
    }
    for m in METRICS:
        x = res["metrics"]["score"][m]
        row.update({m: x["mean"], f"{m} lo": x["lo"], f"{m} hi": x["hi"]})
    d = report.paired(res, pop, "score", "score", runner.preset.n_boot, seed)
    row.update({"ΔNDCG@10": d["diff"], "Δ lo": d["lo"], "Δ hi": d["hi"], "p": d["p"]})
    if cfg.method == "ref-popularity":
        row["p"] = float("nan")  # popularity minus itself: an identity, not a test
    if vote:
        h = demo_hits(runner, cfg)
        row["target among next items"] = float(np.mean(np.array(h["hits"]) > 0))
        row["mean target votes"] = float(np.mean(h["hits"]))
        row["random fill share"] = float(np.mean(h["fallback"]) / params["vote_k"])
    else:
        row.update(dict.fromkeys(HIT_COLUMNS, np.nan))
    return row


def ceiling_grid(
    runner, sizes: CeilingSizes | None = None, seed: int = 0, guard: str = "own", split: str = "test"
) -> pd.DataFrame:
    """The ceiling table, one tidy row per (dataset, method, selector, k).

    ``sizes``: the profile's ``.ceiling`` section by default (datasets × selectors × ks, ``n_users`` test
    users; ``split="valid"``: ``n_valid_users`` validation users, to choose a selector or k).
    Columns: ``dataset, method`` (popularity | markov | vote), ``selector, k, guard, n_users``;
    ``NDCG@10`` and ``HR@10`` with their 95% bootstrap CI (``… lo``, ``… hi``); ``ΔNDCG@10`` vs popularity
    on the same users with its CI (``Δ lo``, ``Δ hi``), the permutation ``p`` and ``p (Holm)`` adjusted
    over every row of the table but popularity's own (its Δ is 0 by identity); for vote rows the share of
    users whose target is among the demonstrations' next items, the mean number of such demonstrations,
    and the share of demonstrations filled in at random.
    """
    sizes = (sizes or runner.profile.ceiling).validate()
    rows, pops = [], {}
    configs = grid_configs(sizes, seed, guard, split)
    for cfg in configs if runner.quiet else progress(configs, f"ceiling grid ({split})"):
        res = runner.run(cfg)
        if cfg.method == "ref-popularity":
            pops[cfg.dataset] = res
        rows.append(_row(runner, cfg, res, pops[cfg.dataset], seed))
    df = pd.DataFrame(rows)
    tested = df["p"].notna()
    df["p (Holm)"] = np.nan
    df.loc[tested, "p (Holm)"] = holm(df.loc[tested, "p"].to_numpy(dtype=float))
    return df


# ----------------------------------------------------------------------------- display


def _delta_text(r: pd.Series) -> str:
    return f"{r['ΔNDCG@10']:+.3f} [{r['Δ lo']:+.3f}, {r['Δ hi']:+.3f}]"


def ceiling_pivot(df: pd.DataFrame) -> pd.DataFrame:
    """``ceiling_grid``'s table as dataset × (method/selector, k) → "ΔNDCG@10 [95% CI]" vs popularity,
    with popularity's own NDCG@10 as the first column."""
    out = df[df["method"] != "popularity"].copy()
    out["column"] = [sel if m == "vote" else m for m, sel in zip(out["method"], out["selector"])]
    out["cell"] = out.apply(_delta_text, axis=1)
    table = out.pivot_table(
        index="dataset", columns=["column", "k"], values="cell", aggfunc="first", sort=False
    )
    pop = df[df["method"] == "popularity"].set_index("dataset")
    table.insert(0, ("popularity NDCG@10", 0), [f"{pop.loc[d, 'NDCG@10']:.3f}" for d in table.index])
    table.columns.names = ["vs popularity", "k"]
    return table


def ceiling_figure(df: pd.DataFrame, metric: str = "NDCG@10", paired: bool = False):
    """``metric`` against k for each selector's vote (95% CIs), one panel per dataset; popularity and
    Markov as horizontal lines with their 95% bands. ``paired``: ΔNDCG@10 vs popularity on the same
    users instead (popularity is then 0 by identity, and the bands are the paired CIs, which are
    much narrower than the marginal ones). Returns the matplotlib Figure."""
    import matplotlib.pyplot as plt

    y, lo, hi = ("ΔNDCG@10", "Δ lo", "Δ hi") if paired else (metric, f"{metric} lo", f"{metric} hi")
    datasets = list(dict.fromkeys(df["dataset"]))
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 3.4), squeeze=False)
    for ax, name in zip(axes[0], datasets):
        d = df[df["dataset"] == name]
        for j, (ref, style) in enumerate((("popularity", ":"), ("markov", "--"))):
            r = d[d["method"] == ref].iloc[0]
            ax.axhline(r[y], color="k", ls=style, lw=0.9, label=ref)
            ax.axhspan(r[lo], r[hi], color="k", alpha=0.08 + 0.04 * j, lw=0)
        votes = d[d["method"] == "vote"].groupby("selector", sort=False)
        for j, (sel, v) in enumerate(votes):
            v = v.sort_values("k")
            x = v["k"] * 2 ** (0.12 * (j - (len(votes) - 1) / 2))  # side by side at each k
            ax.errorbar(
                x, v[y], yerr=[v[y] - v[lo], v[hi] - v[y]], fmt="o-", ms=3, capsize=2, label=f"vote, {sel}"
            )
        ax.set_xscale("log", base=2)
        ax.set(title=name, xlabel="demonstrations k", ylabel=f"{y} vs popularity" if paired else y)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- the LLM's share


def llm_capture(
    runner,
    model: str = "smollm2-135m",
    seed: int = 0,
    variant: str | None = None,
    datasets: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
    k: int | None = None,
    n_users: int | None = None,
) -> pd.DataFrame:
    """How much of the ceiling chapter 2's LLM captures, per (dataset, selector), on the same users.

    Chapter 2's conditions by default (``runner.preset``: the ``icl_datasets`` of ``table_datasets``, the
    ``table_methods`` with demonstrations, ``table_k``, ``n_users`` test users, the score ``variant``
    chosen on validation users by :meth:`Runner.validation_variant`), built exactly as the chapter builds
    them, so cached runs are read back. Per row, paired ΔNDCG@10 with 95% CI and permutation p:

    * ``LLM gain``: the LLM with k demonstrations of the selector minus the LLM zero-shot;
    * ``vote gain (LLM's demos)``: the vote over the same selector's k demonstrations under chapter 2's
      guard (the demonstrations the prompt showed) minus popularity — never above 0 (the guard refuses
      the target);
    * ``ceiling gain``: the vote with only the user's own sequence refused, minus popularity;
    * ``LLM − ceiling``: the per-user difference of the two gains (LLM gain − ceiling gain);
    * ``share``: LLM gain / ceiling gain (point estimates; NaN when the ceiling gain is not > 0).
    """
    p = runner.preset
    datasets = [d for d in p.table_datasets if d in p.icl_datasets] if datasets is None else list(datasets)
    methods = [m for m in (methods or p.table_methods) if m != "zero-shot"]
    k = p.table_k if k is None else k
    n_users = p.n_users if n_users is None else n_users
    if variant is None:
        variant = runner.validation_variant(model, seed)[0]
    n_boot, rows = p.n_boot, []

    def gain(a: dict, b: dict, va: str, vb: str) -> tuple[dict, np.ndarray]:
        return report.paired(a, b, va, vb, n_boot, seed), report.per_user(a, va) - report.per_user(b, vb)

    for name in datasets:
        zero = runner.run(EvalConfig(name, "zero-shot", 0, model=model, seed=seed, n_users=n_users))
        pop = runner.run(EvalConfig(name, "ref-popularity", model=model, n_users=n_users, seed=seed))
        for m in methods:
            llm = runner.run(EvalConfig(name, m, k, model=model, seed=seed, n_users=n_users))
            guarded = runner.run(vote_config(name, m, k, n_users, seed, guard="held-out", model=model))
            ceiling = runner.run(vote_config(name, m, k, n_users, seed, guard="own", model=model))
            d_llm, u_llm = gain(llm, zero, variant, variant)
            d_grd, _ = gain(guarded, pop, "score", "score")
            d_top, u_top = gain(ceiling, pop, "score", "score")
            d_gap = paired_bootstrap(u_llm, u_top, n_boot, seed)
            row = {"dataset": name, "selector": m, "k": k, "n_users": llm["n_users"], "variant": variant}
            for label, d in (("LLM gain", d_llm), ("vote gain (LLM's demos)", d_grd),
                             ("ceiling gain", d_top), ("LLM − ceiling", d_gap)):  # fmt: skip
                row.update({label: d["diff"], **{f"{label} {x}": d[x] for x in ("lo", "hi", "p")}})
            row["share"] = d_llm["diff"] / d_top["diff"] if d_top["diff"] > 0 else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def capture_text(df: pd.DataFrame) -> pd.DataFrame:
    """``llm_capture``'s table with each gain as "Δ [lo, hi]" and its p as text (for display)."""
    labels = ("LLM gain", "vote gain (LLM's demos)", "ceiling gain", "LLM − ceiling")
    out = df[["dataset", "selector", "k", "n_users"]].copy()
    for label in labels:
        lo, hi, p = (df[f"{label} {x}"] for x in ("lo", "hi", "p"))
        out[label] = [
            f"{d:+.3f} [{a:+.3f}, {b:+.3f}], p {format_p(q)}" for d, a, b, q in zip(df[label], lo, hi, p)
        ]
    out["share"] = df["share"]
    return out.set_index(["dataset", "selector", "k"])

"""Chapter 4 §4.7: perturbed demonstrations on real data, at any profile (**our reconstruction**).

Two studies, each a set of runner conditions on the same users and candidates (so every difference is
paired), built with the runner's ``perturbed`` selector (:mod:`lrgd.robust.selectors`):

* :func:`reader_curve` — the trained reader (chapter 2b) reading ``recent`` demonstrations: its
  in-context gain over k = 0 when the demonstrations are perturbed at each rate
  (``robust.perturbations`` × ``robust.reader_rates``);
* :func:`llm_check` — does an LLM read its demonstrations? Its chapter-2 row (``robust.reader_llm_base``
  at k = ``eval.table_k``) against the same demonstrations perturbed at rate 1
  (``robust.reader_llm_perturbations``: ``flip_next`` names a uniform other item as every answer), in the
  score variant chosen on validation users (:meth:`lrgd.rec.runner.Runner.validation_variant`).

Every run is the runner's (cached by configuration, data, weights and code). With ``compute=False``
nothing is computed: each run is read from its stored summary — the runner's ``eval/`` file or the grid's
published copy (:func:`lrgd.grid.published_path`) — and a study with a run missing is ``None``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from lrgd.metrics import bootstrap_ci, holm
from lrgd.rec import report
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.runner import choose_variant

METRIC = "NDCG@10"


def stored_path(runner, cfg: EvalConfig) -> Path | None:
    """Where ``cfg``'s summary under its current key is stored: the runner's ``eval/`` file, else the
    grid's published copy; ``None`` when neither exists."""
    from lrgd.grid import published_path

    return next((p for p in (runner.paths(cfg)[1], published_path(runner, cfg)) if p.is_file()), None)


def stored(runner, cfg: EvalConfig) -> dict | None:
    """``cfg``'s stored summary (:func:`stored_path`), or ``None``; nothing is computed."""
    path = stored_path(runner, cfg)
    return None if path is None else json.loads(path.read_text())


def fetch(runner, cfg: EvalConfig, compute: bool = True) -> dict | None:
    """``cfg``'s summary: stored if it is, else computed by the runner (``compute``) or ``None``."""
    found = stored(runner, cfg)
    return found if found is not None or not compute else runner.run(cfg)


def reader_configs(R, model: str, seed: int = 0) -> tuple[EvalConfig, list[tuple[str, float, EvalConfig]]]:
    """(k = 0 condition, [(perturbation, rate, condition)]) of the reader's curve; rate 0 is ``recent``."""
    base = {"n_users": R.reader_users, "seed": seed, "guard": "own", "model": model}
    zero = EvalConfig(R.reader_dataset, "zero-shot", 0, **base)
    rows = []
    for name in R.perturbations:
        for rate in R.reader_rates:
            method, params = (
                ("recent", {}) if rate == 0 else ("perturbed", {"perturbation": name, "rate": rate})
            )
            rows.append((name, rate, EvalConfig(R.reader_dataset, method, R.reader_k, params=params, **base)))
    return zero, rows


def reader_curve(runner, R, model: str, seed: int = 0, n_boot: int = 1000, compute: bool = True):
    """The reader's gain over k = 0 per (perturbation, rate): a DataFrame with columns perturbation, rate,
    ``gain over k = 0``, lo, hi (paired bootstrap 95% CI) and ``attrs["n_users"]`` (users evaluated);
    ``None`` when a run is missing (``compute=False``)."""
    zero_cfg, cfgs = reader_configs(R, model, seed)
    zero = fetch(runner, zero_cfg, compute)
    rows = []
    for name, rate, cfg in cfgs:
        res = fetch(runner, cfg, compute)
        if zero is None or res is None:
            return None
        d = report.paired(res, zero, "score", "score", n_boot, seed)
        rows.append(
            {"perturbation": name, "rate": rate, "gain over k = 0": d["diff"], "lo": d["lo"], "hi": d["hi"]}
        )
    df = pd.DataFrame(rows)
    df.attrs["n_users"] = len(zero["users"])  # the profile's size may exceed the dataset's users
    return df


def reader_reading(rg: pd.DataFrame, perturbations) -> str:
    """What the curve says about where the reader's gain comes from (answers vs histories), in words."""
    g = rg.set_index(["perturbation", "rate"])["gain over k = 0"]
    top = float(rg["rate"].max())
    clean = g.xs(0.0, level="rate").iloc[0]
    flip = g[("flip_next", top)]
    hist = min(g[(n, top)] for n in perturbations if n != "flip_next")
    where = (
        "mostly from the demonstrations' answers"
        if flip < clean / 2 <= hist
        else "not from the answers alone"
        if flip >= clean / 2
        else "from the answers and the histories"
    )
    return (
        f"With clean demonstrations the gain is {clean:+.3f}; with every answer flipped it is {flip:+.3f}, "
        f"and with histories perturbed at rate {top:g} at least {hist:+.3f}: the reader's in-context gain "
        f"comes {where}."
    )


def llm_configs(prof, seed: int = 0) -> dict[str, EvalConfig]:
    """The LLM check's conditions by row label: k = 0, the clean row, each perturbation at rate 1."""
    R, model, k = prof.robust, prof.grid.models[0], prof.eval.table_k
    base = {"n_users": R.reader_llm_users, "model": model, "seed": seed}
    out = {
        "zero-shot (k = 0)": EvalConfig(R.reader_llm_dataset, "zero-shot", 0, **base),
        f"{R.reader_llm_base}, clean": EvalConfig(R.reader_llm_dataset, R.reader_llm_base, k, **base),
    }
    for name in R.reader_llm_perturbations:
        params = {"base": R.reader_llm_base, "perturbation": name, "rate": 1.0}
        out[f"{R.reader_llm_base}, {name} at rate 1"] = EvalConfig(
            R.reader_llm_dataset, "perturbed", k, params=params, **base
        )
    return out


def perturbed_configs(prof, seed: int = 0) -> list[EvalConfig]:
    """Every condition of both studies at ``prof`` (the reader's curve, then the LLM check)."""
    zero, rows = reader_configs(prof.robust, prof.reader.models[0], seed)
    return [zero, *(c for _, _, c in rows), *llm_configs(prof, seed).values()]


def llm_variant(runner, prof, seed: int = 0, compute: bool = True) -> str | None:
    """The LLM's score variant, chosen on chapter 2's validation users (zero-shot, pooled over
    ``eval.valid_datasets``); ``None`` when a validation run is missing (``compute=False``)."""
    model, E = prof.grid.models[0], prof.eval
    runs = [
        fetch(
            runner,
            EvalConfig(name, "zero-shot", split="valid", n_users=E.n_valid_users, model=model, seed=seed),
            compute,
        )
        for name in E.valid_datasets
    ]
    return None if any(r is None for r in runs) else choose_variant(runs, METRIC)[0]


def llm_check(runner, prof, seed: int = 0, n_boot: int = 1000, compute: bool = True) -> dict | None:
    """Does the profile's first LLM read its demonstrations? ``{"table", "variant", "n_users", "model",
    "dataset", "k"}``: per row NDCG@10 with a bootstrap 95% CI and the paired difference from the clean row
    (CI, sign-flip p, Holm over the rows compared); ``None`` when a run is missing (``compute=False``)."""
    variant = llm_variant(runner, prof, seed, compute)
    cfgs = llm_configs(prof, seed)
    runs = {label: fetch(runner, cfg, compute) for label, cfg in cfgs.items()}
    if variant is None or any(r is None for r in runs.values()):
        return None
    clean_label = list(cfgs)[1]
    clean = runs[clean_label]
    rows, ps = {}, {}
    for label, res in runs.items():
        mean, lo, hi = bootstrap_ci(report.per_user(res, variant, METRIC), n_boot=n_boot, seed=seed)
        rows[label] = {METRIC: mean, "lo": lo, "hi": hi}
        if label != clean_label:
            d = report.paired(res, clean, variant, variant, n_boot, seed)
            rows[label].update({"Δ vs clean": d["diff"], "Δ lo": d["lo"], "Δ hi": d["hi"], "p": d["p"]})
            ps[label] = d["p"]
    for label, p in zip(ps, holm(list(ps.values())), strict=True):
        rows[label]["p (Holm)"] = float(p)
    table = pd.DataFrame(rows).T
    c = cfgs[clean_label]
    return {
        "table": table,
        "variant": variant,
        "n_users": len(clean["users"]),
        "model": c.model,
        "dataset": c.dataset,
        "k": c.k,
        "clean": clean_label,
    }


def direction(row, alpha: float = 0.05) -> int:
    """+1 / −1 when a row's paired difference is detected — its 95% CI excludes zero *and* its Holm p is
    below ``alpha`` — else 0 (an interval the permutation test does not confirm counts as no change)."""
    if row["p (Holm)"] >= alpha:
        return 0
    return 1 if row["Δ lo"] > 0 else -1 if row["Δ hi"] < 0 else 0


def llm_reading(chk: dict) -> str:
    """The check in words: does perturbing the answers (and the items) move the LLM's ranking? A
    difference counts only when :func:`direction` detects it."""
    t, clean = chk["table"], chk["clean"]

    def ci(r) -> str:
        return f"{r['Δ vs clean']:+.3f} [{r['Δ lo']:+.3f}, {r['Δ hi']:+.3f}], Holm p {r['p (Holm)']:.2g}"

    moved = {1: "raises", -1: "lowers", 0: "does not detectably move"}
    perturbed = t.drop(index=[t.index[0], clean])
    parts = [
        f"{label.split(', ', 1)[1]} {moved[direction(r)]} its NDCG@10 ({ci(r)})"
        for label, r in perturbed.iterrows()
    ]
    z = t.iloc[0]
    gain = {1: "below", -1: "above", 0: "not reliably different from"}[direction(z)]
    moves = [direction(r) != 0 for _, r in perturbed.iterrows()]
    flips = [r for label, r in perturbed.iterrows() if "flip_next" in label]
    if flips and direction(flips[0]) != 0:
        reads = "its ranking depends on which items the demonstrations name as answers"
    elif any(moves):
        reads = "its ranking depends on the demonstrations' items, but not detectably on their answers"
    else:
        reads = "no dependence on the demonstrations' content is detectable at this size"
        if direction(z) > 0:
            reads += (
                " — they lower its accuracy by being in the prompt, whatever they say, so a better choice of "
                "them (robust or optimised) has nothing to act on"
            )
    return (
        f"On {chk['n_users']} users of {chk['dataset']}, {chk['model']} with k = {chk['k']} clean "
        f"demonstrations is {gain} zero-shot (k = 0 − clean: {ci(z)}). Against the clean demonstrations, "
        f"{'; '.join(parts)}: {reads}."
    )

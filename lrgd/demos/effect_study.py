"""Chapter 3 on a real LLM: Effect_D against the true gain for M demonstrations × N users (§3.4), the
selection by Effect_D through chapter 2's runner (§3.5), and the tables and sentences both sections print.

Every function returns numbers or a table; the notebook only calls them and shows the result. Sentences
that interpret a measurement are built here from the measurement (so they are true at every profile).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from lrgd.demos import effect as fx
from lrgd.errors import DataError, ModelError
from lrgd.metrics import holm, paired_bootstrap, per_user_metrics, spearman_matrix_ci, within_user_spearman_ci
from lrgd.rec.leakage import count_leaks, held_out, shown_in_prompt
from lrgd.rec.prompts import Demonstration, prompt_parts, titled
from lrgd.rec.select import DemoPool

#: the user's last titles in a §3.4 prompt, and the demonstrations' history length
HISTORY_LEN = 5
#: modules whose source determines the §3.4 matrices (their code hash keys the cache)
CODE = ("lrgd.demos.effect", "lrgd.demos.effect_study", "lrgd.rec.prompts", "lrgd.rec.leakage", "lrgd.llm")


# ----------------------------------------------------------------------------- correlations


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


def ci_words(lo: float, hi: float) -> str:
    """A 95% interval in words: above zero, below zero, or spanning zero."""
    return "above zero" if lo > 0 else ("below zero" if hi < 0 else "spanning zero")


def _rho(row: pd.Series, within: bool = False) -> str:
    if within:
        return f"{row['within-user ρ']:.2f} [{row['w. CI low']:.2f}, {row['w. CI high']:.2f}]"
    return f"{row['Spearman ρ']:.2f} [{row['CI low']:.2f}, {row['CI high']:.2f}]"


# ----------------------------------------------------------------------------- §3.4: pairs on a real LLM


@dataclass
class LLMPairs:
    """N users and M demonstrations of a dataset, as the real LLM sees them.

    ``sources`` [M] (pool user, cut) and ``demos`` [M] the demonstrations; ``tokens`` [M] their ids in
    the slot; ``prompts`` [N] each user's zero-shot :class:`lrgd.demos.effect.SlotPrompt` (last
    :data:`HISTORY_LEN` titles, target = the held-out test item's title).
    """

    users: list[str]
    sources: list[tuple[str, int]]
    demos: list[Demonstration]
    tokens: list[torch.Tensor]
    prompts: list[fx.SlotPrompt]

    @property
    def slot(self) -> int:
        return self.prompts[0].slot


def study_users(split, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` test users drawn without replacement from the sorted test users."""
    everyone = sorted(split.test)
    if n > len(everyone):
        raise DataError(f"{n} users asked for but the dataset has {len(everyone)} test users; lower n_users")
    return [everyone[i] for i in rng.choice(len(everyone), n, replace=False)]


def shared_demonstrations(
    ds, split, users: list[str], n: int, rng: np.random.Generator, history_len: int = HISTORY_LEN
) -> tuple[list[tuple[str, int]], list[Demonstration]]:
    """``n`` demonstrations shown to every one of ``users``: other users' final training transitions.

    Candidates come in a seeded random order over the training users with ≥ 2 items other than the
    first evaluated user (the order of :func:`lrgd.rec.prompts.random_demonstrations` for that user); each
    passes the library's one leakage guard (:meth:`lrgd.rec.select.DemoPool.allowed`) for *every*
    evaluated user: not their own sequence, and none of their held-out items shown, by id or by title.
    """
    pool = DemoPool(ds, split, history_len)
    held = held_out(ds, split, users)
    order = sorted(u for u in split.train if u != users[0] and len(split.train[u]) >= 2)
    sources, demos = [], []
    for j in rng.permutation(len(order)):
        src = order[j]
        built = pool.make(src, len(split.train[src]) - 1)
        if built is None or not all(pool.allowed(u, src, built[1], held) for u in users):
            continue
        sources.append((src, len(split.train[src]) - 1))
        demos.append(built[0])
        if len(demos) == n:
            return sources, demos
    raise DataError(f"only {len(demos)} leakage-free demonstrations for {len(users)} users; lower n_demos")


def llm_pairs(lm, ds, split, n_demos: int, n_users: int, seed: int = 0) -> LLMPairs:
    """The §3.4 study: users, demonstrations, their tokens and the users' slot prompts (seeded)."""
    rng = np.random.default_rng([seed, 6])
    users = study_users(split, n_users, rng)
    sources, demos = shared_demonstrations(ds, split, users, n_demos, rng)
    tokens = [fx.demo_tokens(lm.tokenizer, d.history, d.next_item) for d in demos]
    slot = max(len(t) for t in tokens)
    prompts = [
        fx.slot_prompt(
            lm.tokenizer, prompt_parts(titled(ds, split.test[u][0])[-HISTORY_LEN:]),
            ds.title(split.test[u][1]), lm.info.chat, slot,
        )
        for u in users
    ]  # fmt: skip
    return LLMPairs(users, sources, demos, tokens, prompts)


def leaks_as_built(pairs: LLMPairs, tokenizer, ds, split) -> int:
    """(demonstration, user) prompts that show one of the user's held-out titles, read from the decoded
    tokens the true gain is computed on (:func:`lrgd.rec.leakage.count_leaks`), not from the guard.

    Raises :class:`ModelError` when a prompt's decoded text does not show exactly one demonstration block
    (a tokenizer whose decoding loses the template would otherwise count nothing and look clean).
    """
    total = 0
    for user, sp in zip(pairs.users, pairs.prompts):
        held = held_out(ds, split, user)
        for tokens in pairs.tokens:
            ids, _, start = sp.layout(tokens)
            text = tokenizer.decode(ids[:start].tolist())
            if len(shown_in_prompt(text)) != 1:
                raise ModelError(
                    f"cannot read the demonstration back from the decoded prompt of user {user!r}: "
                    "the tokenizer's decode does not reproduce the prompt template"
                )
            total += count_leaks(text, held)
    return total


def llm_matrices(model, pairs: LLMPairs, third: int) -> dict[str, np.ndarray]:
    """Effect_D, its ablations and the true gain [M, N] for every pair (M + 2N passes + N + M·N for the
    gain; the ablations reuse the states). ``third``: the layers of the "early layers" ablation."""
    sps, ids = pairs.prompts, pairs.tokens
    d_states = fx.demo_states(model, sps, ids)
    u_all = fx.user_states(model, sps, "all")
    out = {
        "true gain": fx.true_gain_matrix(model, sps, ids),
        "Effect_D": fx.effect_matrix(d_states, u_all),
        "linear dual (ΔW_ICL q)": fx.effect_matrix(d_states, u_all, form="linear"),
        "derivative rate": fx.effect_matrix(d_states, u_all, rate="derivative"),
        f"early layers only (< {third})": fx.effect_matrix(d_states, u_all, layers=list(range(third))),
        "no RoPE positioning": fx.effect_matrix(fx.demo_states(model, sps, ids, at_slot=False), u_all),
    }
    for which in ("target", "end"):
        out[f"gradient at {which} positions"] = fx.effect_matrix(d_states, fx.user_states(model, sps, which))
    return {k: v.numpy() for k, v in out.items()}


def matrices_key(pairs: LLMPairs, lm, dataset: str, fingerprint: str, device: str, seed: int) -> dict:
    """What determines :func:`llm_matrices`: the full configuration, the data fingerprint, the weights'
    hash and the code hash of :data:`CODE` (the key parts of :func:`lrgd.results.cached_json`)."""
    from lrgd.results import code_hash

    config = {
        "dataset": dataset, "model": lm.info.name, "device": device, "dtype": str(lm.model.dtype),
        "seed": seed, "history_len": HISTORY_LEN, "users": pairs.users, "sources": pairs.sources,
        "demos": [asdict(d) for d in pairs.demos],
    }  # fmt: skip
    return {"config": config, "data": fingerprint, "weights": lm.info.sha256, "code": code_hash(*CODE)}


def cached_matrices(path, pairs: LLMPairs, lm, dataset: str, fingerprint: str, device: str, seed: int):
    """:func:`llm_matrices`, computed once per key and stored at ``path``: (matrices, from_cache)."""
    from lrgd.results import cached_json

    third = max(1, lm.info.n_layers // 3)
    key = matrices_key(pairs, lm, dataset, fingerprint, device, seed)
    mats, hit = cached_json(
        path, key, lambda: {k: v.tolist() for k, v in llm_matrices(lm.model, pairs, third).items()}
    )
    return {k: np.array(v) for k, v in mats.items()}, hit


def llm_reading(abl: pd.DataFrame, gain: np.ndarray, effect: np.ndarray) -> str:
    """§3.4's reading, built from the ablation table and the gain matrix [M, N]."""
    e = abl.loc["Effect_D"]
    helps = float((gain > 0).mean())
    most = "most demonstrations *raise* the loss" if helps < 0.5 else "most demonstrations *lower* the loss"
    rank = {"above zero": "a positive", "below zero": "a negative", "spanning zero": "no clear"}
    parts = [
        f"**Reading.** In this run {most} ({helps:.0%} of pairs help), and Effect_D shows "
        f"{rank[ci_words(e['CI low'], e['CI high'])]} rank correlation with the true gain, "
        f"ρ = {_rho(e)} over all {gain.size} pairs and {_rho(e, True)} within a user.",
        f"Effect_D's mean is {effect.mean():+.3f} against a mean true gain of {gain.mean():+.3f} nats, "
        "so read it as a ranking, not a calibrated prediction.",
    ]
    better = [n for n in abl.index if n != "Effect_D" and abl.loc[n, "CI low"] > e["Spearman ρ"]]
    worse = [n for n in abl.index if n != "Effect_D" and abl.loc[n, "CI high"] < e["Spearman ρ"]]
    same = [n for n in abl.index if n not in ("Effect_D", *better, *worse)]
    for names, words in ((worse, "rank clearly worse than Effect_D (interval below its ρ)"),
                         (better, "rank clearly better (interval above its ρ)"),
                         (same, "cannot be told apart from it at this size")):  # fmt: skip
        if names:
            parts.append(f"Of the ablations, {', '.join(names)} {words}.")
    return " ".join(parts)


# ----------------------------------------------------------------------------- §3.5: selection by Effect_D


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


def selection_leaks(pool, records: list[dict]) -> int:
    """Demonstrations in the records' prompts that show the user's held-out item by id or by title,
    rebuilt from their sources (``demo_sources``) and checked against the held-out items directly."""
    leaked = 0
    for rec in records:
        held = pool.held_out(rec["user"])
        for src, cut in rec["demo_sources"]:
            demo, ids = pool.make(src, cut)
            leaked += bool(held & set(ids)) or count_leaks([demo], held) > 0
    return leaked


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

"""Ranking-aligned Effect_D against the NLL one, secant against derivative rate (chapter 4, §4.2).

Our reconstruction (the paper's formulas are not available). :mod:`lrgd.demos.effect` scores a
demonstration D for a user u by the first-order change of a loss L_u; with ``loss="nll"`` L_u is the
target's negative log-likelihood, with ``loss="rank"`` the target's −log softmax over the candidate set
(Eq. (rank) there), which ignores a shift that raises every candidate alike. This module holds what a
study of the variants needs on any model whose candidates are single tokens:

* :func:`variant_matrices`: Effect_D [M, N] for loss ∈ :data:`LOSSES` × rate ∈ :data:`RATES`
  (M + 2·N passes per loss: the demonstration states are shared);
* :func:`true_outcomes`: for every pair, what inserting D really does (one forward pass per pair):
  the NLL drop, the rank-loss drop, the target's rank gain among the candidates and its NDCG@10 gain;
* :func:`rho_table`: Spearman ρ of each variant against each true outcome, pooled over all pairs and
  within users (the mean of per-user ρ over the M demonstrations), each with a bootstrap CI over users;
* :func:`within_rho_difference`: the paired per-user difference of two variants' within-user ρ;
* :func:`rate_agreement`: how often the two rates disagree in sign, and how they rank pairs alike.

Why the rates can disagree: the docstring of :mod:`lrgd.demos.effect` (η = Z_D/Z_Z against
Z_D/(Z_Z + Z_D)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from lrgd.demos import effect as fx
from lrgd.demos.effect import LOSSES, RATES, SlotPrompt
from lrgd.metrics import (
    bootstrap_ci,
    rank_metrics,
    ranks_of_targets,
    spearman,
    spearman_matrix_ci,
    within_user_spearman,
    within_user_spearman_ci,
)

#: the true outcomes of inserting a demonstration, each signed so that positive means "D helps u"
GAINS = ("NLL drop", "rank-loss drop", "rank gain", "NDCG@10 gain")


def variant_matrices(
    model, users: list[SlotPrompt], d_states: list[fx.DemoState], positions: str = "all"
) -> dict[tuple[str, str], np.ndarray]:
    """(loss, rate) → Effect_D [M, N] for every loss in :data:`LOSSES` and rate in :data:`RATES`.

    ``users`` must carry their candidates (``SlotPrompt.candidates``) for the rank loss; ``d_states`` from
    :func:`lrgd.demos.effect.demo_states` on the same users. One forward + backward per user and loss.
    """
    out = {}
    for loss in LOSSES:
        u_states = fx.user_states(model, users, positions, loss=loss)
        for rate in RATES:
            out[loss, rate] = fx.effect_matrix(d_states, u_states, rate=rate).numpy()
    return out


def _outcome(model, sp: SlotPrompt, demo: torch.Tensor | None, k: int) -> np.ndarray:
    """[NLL, rank loss, rank of the target among the candidates (1 = best), NDCG@k] of one prompt."""
    ids, logits = fx.logits_with_demo(model, sp, demo)
    col = fx.target_column(sp)
    scores = fx.candidate_logits(logits, sp).cpu().numpy()[None]
    rank = int(ranks_of_targets(scores, target_col=col, rng=0)[0])
    return np.array(
        [
            float(fx.target_nll(logits, ids, len(sp.target))),
            float(fx.rank_loss(logits, sp)),
            rank,
            rank_metrics(rank, (f"NDCG@{k}",))[f"NDCG@{k}"],
        ]
    )


@torch.no_grad()
def true_outcomes(model, users: list[SlotPrompt], demos: list[torch.Tensor], k: int = 10) -> dict:
    """Name in :data:`GAINS` → [M, N]: what inserting each demonstration does to each user's prompt.

    NLL drop = NLL(zero-shot) − NLL(with D); rank-loss drop likewise for Eq. (rank); rank gain =
    rank(zero-shot) − rank(with D) (positions moved up among the candidates); NDCG@k gain = NDCG@k(with D)
    − NDCG@k(zero-shot). One forward pass per user and per pair (N + M·N), all four from the same logits.
    """
    from lrgd.progress import progress

    base = np.stack([_outcome(model, u, None, k) for u in users])  # [N, 4]
    rows = [[_outcome(model, u, d, k) for u in users] for d in progress(demos, "true outcomes (per pair)")]
    after = np.array(rows)  # [M, N, 4]
    drop = base[None] - after  # losses and ranks: smaller is better
    return {
        "NLL drop": drop[..., 0],
        "rank-loss drop": drop[..., 1],
        "rank gain": drop[..., 2],
        f"NDCG@{k} gain": -drop[..., 3],
    }


def rho_table(
    effects: dict[tuple, np.ndarray],
    gains: dict[str, np.ndarray],
    key_names: tuple[str, ...] = ("signal", "loss", "rate"),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Spearman ρ of every Effect_D variant against every true gain, pooled and within users.

    ``effects``: a key tuple named by ``key_names`` → [M, N]; ``gains``: name → [M, N]. One row per
    (key…, gain): pooled ρ over all M·N pairs with a 95% CI from resampling users
    (:func:`lrgd.metrics.spearman_matrix_ci`), the mean within-user ρ with a 95% CI over users
    (:func:`lrgd.metrics.within_user_spearman_ci`; users whose column is constant on either side drop
    out) and the number of users that entered it.
    """
    rows, index = [], []
    for key, eff in effects.items():
        for name, gain in gains.items():
            rho, lo, hi = spearman_matrix_ci(eff, gain, n_boot, seed)
            w, wlo, whi = within_user_spearman_ci(eff, gain, n_boot, seed)
            n_ok = int(np.sum(~np.isnan(within_user_spearman(eff, gain)[1])))
            rows.append({"pooled ρ": rho, "CI low": lo, "CI high": hi, "within ρ": w, "w. CI low": wlo,
                         "w. CI high": whi, "users (within)": n_ok})  # fmt: skip
            index.append((*key, name))
    return pd.DataFrame(rows, index=pd.MultiIndex.from_tuples(index, names=[*key_names, "gain"]))


def within_rho_difference(
    a: np.ndarray, b: np.ndarray, gain: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """Mean over users of ρ_u(a, gain) − ρ_u(b, gain) (within-user Spearman ρ, all [M, N]) with a paired
    bootstrap CI over users: does variant ``a`` rank each user's demonstrations better than ``b``?
    Users where either ρ is undefined (a constant column) drop out."""
    da, db = within_user_spearman(a, gain)[1], within_user_spearman(b, gain)[1]
    ok = ~(np.isnan(da) | np.isnan(db))
    return bootstrap_ci(da[ok] - db[ok], n_boot, seed)


def rate_agreement(effects: dict[tuple, np.ndarray]) -> pd.DataFrame:
    """Per key with the rate left out (e.g. (signal, loss)): the share of pairs where the secant and the
    derivative Effect_D have opposite signs, and their pooled and mean within-user Spearman ρ."""
    rows = {}
    for key in effects:
        if key[-1] != "secant" or (*key[:-1], "derivative") not in effects:
            continue
        sec, der = effects[key], effects[(*key[:-1], "derivative")]
        rows[key[:-1]] = {
            "opposite sign (share of pairs)": float(np.mean(np.sign(sec) != np.sign(der))),
            "pooled ρ": spearman(sec, der),
            "within ρ": within_user_spearman(sec, der)[0],
        }
    return pd.DataFrame(rows).T

"""Chapter 1, §1.1–1.3: the dual equations checked on random heads (no model, no data).

Each function draws its heads from one ``torch.Generator`` and returns plain numbers, so the chapter
prints and plots them. Most of these are *identities*: they hold by algebra whenever the code is
right (the autograd step equals its closed form, the linear dual equals linear attention, the
softmax split equals softmax attention). They test the code, not the paper's claim. The one
measurement that could come out otherwise is the random-feature error rate (Monte Carlo, expected
slope −½ on a log-log plot).

>>> gen = torch.Generator().manual_seed(0)
>>> q, k, v, demo = random_head(gen, n_z=4, n_d=2, d=3, dv=2)
>>> q.shape, k.shape, v.shape, int(demo.sum())
(torch.Size([3]), torch.Size([6, 3]), torch.Size([6, 2]), 2)
"""

from __future__ import annotations

import numpy as np
import torch

from lrgd.dual import algebra as dual


def random_head(
    gen: torch.Generator, n_z: int, n_d: int, d: int = 32, dv: int = 24, dtype=torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random query ``q`` [d], keys ``k`` [N, d], values ``v`` [N, dv] and a demonstration mask [N]
    (``n_d`` of the N = n_z + n_d tokens, at random places)."""
    q = torch.randn(d, generator=gen, dtype=dtype)
    k = torch.randn(n_z + n_d, d, generator=gen, dtype=dtype)
    v = torch.randn(n_z + n_d, dv, generator=gen, dtype=dtype)
    demo = torch.zeros(n_z + n_d, dtype=torch.bool)
    demo[torch.randperm(n_z + n_d, generator=gen)[:n_d]] = True
    return q, k, v, demo


def linear_dual_errors(gen: torch.Generator, n_trials: int) -> dict[str, list[float]]:
    """Eqs. (eq-la-split) and (eq-gd) on ``n_trials`` heads (Z: 40 tokens, D: 12, float64).

    Returns relative errors ``{"split": (W_ZSL + ΔW_ICL) q vs LA(q), "gd": autograd step vs W_ZSL +
    ΔW_ICL}``, one per trial. Both are identities.
    """
    out = {"split": [], "gd": []}
    for _ in range(n_trials):
        q, k, v, demo = random_head(gen, n_z=40, n_d=12)
        d_model = dual.linear_dual(k, v, demo)  # W_ZSL and ΔW_ICL
        w1 = dual.gd_step(d_model.w_zsl, k[demo], v[demo], lr=1.0)  # autograd on Eq. (eq-loss)
        out["split"].append(dual.relative_error(d_model(q), dual.linear_attention(q, k, v)).item())
        out["gd"].append(dual.relative_error(w1, d_model.w_zsl + d_model.delta_w_icl, dim=None).item())
    return out


def step_size_sweep(gen: torch.Generator, etas: np.ndarray) -> dict[str, list[float]]:
    """One head, one GD step of size η for each ``etas``: ``gap`` = ‖f_{W1}(q) − LA(q)‖/‖LA(q)‖ and
    ``loss`` = L(W1) on the demonstrations."""
    q, k, v, demo = random_head(gen, n_z=40, n_d=12)
    d_model = dual.linear_dual(k, v, demo)
    la = dual.linear_attention(q, k, v)
    gap, loss = [], []
    for eta in etas:
        w = dual.gd_step(d_model.w_zsl, k[demo], v[demo], lr=float(eta))
        gap.append(dual.relative_error(w @ q, la).item())
        loss.append(dual.dual_loss(w, k[demo], v[demo]).item())
    return {"gap": gap, "loss": loss}


def rope_dual_errors(gen: torch.Generator, n_trials: int) -> list[float]:
    """Eq. (eq-rope): the linear dual of RoPE-rotated keys and query vs linear attention (an identity)."""
    errs = []
    for _ in range(n_trials):
        q, k, v, demo = random_head(gen, n_z=40, n_d=12)
        kr, qr = dual.rope(k, torch.arange(len(k))), dual.rope(q[None], torch.tensor([len(k)]))[0]
        dual_out, la = dual.linear_dual(kr, v, demo)(qr), dual.linear_attention(qr, kr, v)
        errs.append(dual.relative_error(dual_out, la).item())
    return errs


def rope_shift_sweep(gen: torch.Generator, shifts: np.ndarray, t0: int = 200) -> dict[str, list[float]]:
    """Relative change of ΔW_ICL q for 12 demonstration tokens at positions 100–111 and a query at ``t0``
    when the demonstrations move ``s`` tokens earlier (``moved``) or the whole prompt moves (``together``)."""
    q, k, v, _ = random_head(gen, n_z=0, n_d=12)
    pos = torch.arange(100, 112)

    def update(shift_demo: int, shift_query: int) -> torch.Tensor:
        dw = dual.outer_sum(dual.rope(k, pos + shift_demo), v)
        return dw @ dual.rope(q[None], torch.tensor([t0 + shift_query]))[0]

    base = update(0, 0)
    moved = [dual.relative_error(update(-int(s), 0), base).item() for s in shifts]
    together = [dual.relative_error(update(int(s), int(s)), base).item() for s in shifts]
    return {"moved": moved, "together": together}


def softmax_split_errors(gen: torch.Generator, n_trials: int) -> dict[str, list[float]]:
    """Eq. (eq-softmax-split) in float32 on heads with Z: 200, D: 60 tokens, d = d_v = 64, against a
    float64 softmax: ``error`` per trial (an identity, up to rounding) and the demonstrations' ``share`` η."""
    errs, shares = [], []
    for _ in range(n_trials):
        q, k, v, demo = random_head(gen, n_z=200, n_d=60, d=64, dv=64, dtype=torch.float32)
        sp = dual.softmax_split(q, k, v, demo)
        ref = torch.softmax((k.double() @ q.double()) / 8.0, 0) @ v.double()  # float64 reference
        errs.append(dual.relative_error(sp.combined().double(), ref).item())
        shares.append(sp.share.item())
    return {"error": errs, "share": shares}


def kernel_dual_errors(gen: torch.Generator, feature_counts, n_seeds: int):
    """Eqs. (eq-prf)–(eq-kernel-dual): RMS relative error over ``n_seeds`` feature draws for each number
    of random features ``m``, of ΔW^φ φ(q) against Σ_D v e^s and of the whole attention output.

    Keys and query are scaled by 0.3 (logits of order 1). Returns (a DataFrame indexed by ``m`` with one
    column per quantity, the log-log slope of each column; the Monte Carlo rate is −½).
    """
    import pandas as pd

    q, k, v, demo = random_head(gen, n_z=200, n_d=60, d=64, dv=64)
    k, q = k * 0.3, q * 0.3  # larger logits raise the error constant, not its rate
    exact_num = (v[demo].T * torch.exp((k[demo] @ q) / 8.0)).sum(1)  # Σ_D v_i e^{s_i}
    exact_out = dual.softmax_split(q, k, v, demo).out
    rows = []
    for m in feature_counts:
        for r in range(n_seeds):
            w = dual.draw_features(m, k.shape[1], torch.Generator().manual_seed(1000 * m + r))
            kd = dual.kernel_dual(k, v, demo, w)
            phi_q = dual.query_features(q, w)
            rows.append(
                {
                    "m": m,
                    "ΔW^φ φ(q) vs Σ_D v e^s": dual.relative_error(kd.delta_w @ phi_q, exact_num).item(),
                    "attention output": dual.relative_error(kd(phi_q), exact_out).item(),
                }
            )
    rf = (pd.DataFrame(rows).set_index("m") ** 2).groupby("m").mean() ** 0.5  # RMS over seeds
    slopes = {c: float(np.polyfit(np.log(rf.index), np.log(rf[c]), 1)[0]) for c in rf.columns}
    return rf, slopes

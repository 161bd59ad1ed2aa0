"""Chapter 1 on a real LLM: rebuild every head's attention from the dual split, and compare the
dual's predicted demonstration update with the real change the demonstrations cause.

All rebuilds run in float64 from the float32 tensors captured by :func:`lrgd.llm.forward_captured`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lrgd.dual.algebra import cosine, heads_linear_update, heads_split, relative_error
from lrgd.llm import Captured, forward_captured
from lrgd.rec.prompts import Prompt, drop_span


def split_at(cap: Captured, demo: torch.Tensor, pos: int = -1, dtype=torch.float64):
    """Eq. (6) for all heads of one layer at token ``pos`` (causal prefix only)."""
    t = cap.q.shape[1]
    pos = pos % t
    q = cap.q[:, pos].to(dtype)
    k, v = cap.k[:, : pos + 1].to(dtype), cap.v[:, : pos + 1].to(dtype)
    return heads_split(q, k, v, demo[: pos + 1], cap.scaling, cap.sliding_window)


def rebuild_errors(layers: dict[int, Captured], demo: torch.Tensor, pos: int = -1) -> dict[str, torch.Tensor]:
    """Per layer × head: relative error of the dual rebuild against the model's own output, and η = Z_D/Z.

    Returns ``{"error": [L, H], "share": [L, H]}``.
    """
    errs, shares = [], []
    for li in sorted(layers):
        cap = layers[li]
        sp = split_at(cap, demo, pos)
        errs.append(relative_error(sp.combined(), cap.out[pos].to(torch.float64)))
        shares.append(sp.share)
    return {"error": torch.stack(errs), "share": torch.stack(shares)}


@dataclass
class DeltaOStudy:
    """Per layer × head arrays [L, H] for one prompt (see :func:`delta_o_study`)."""

    cos_linear: torch.Tensor  # cos(Δo, ΔW_ICL q)                      softmax-free dual
    cos_softmax: torch.Tensor  # cos(Δo, η (o_D − o_Z))                 softmax-aware dual (direct part)
    cos_placebo: torch.Tensor  # cos(Δo, η_P (o_P − o_rest))            same formula on a non-demo span
    cos_random: torch.Tensor  # cos(Δo, random direction)
    indirect_ratio: torch.Tensor  # ‖o_Z(with) − o(without)‖ / ‖Δo‖   change arriving through earlier layers
    direct_ratio: torch.Tensor  # ‖η (o_D − o_Z)‖ / ‖Δo‖
    share: torch.Tensor  # η = Z_D / Z
    decomposition_error: float  # max|Δo − (indirect + direct)| / max|Δo|: the rebuild error, ~1e-6
    rebuild_error: torch.Tensor  # [L, H] as in rebuild_errors


def placebo_mask(prompt: Prompt, length: int) -> torch.Tensor:
    """The ``length`` last non-demonstration tokens before the ``answer`` cue (the placebo span).

    In a recommendation prompt these are the end of the history and the candidates: ordinary
    zero-shot tokens, as many as the demonstrations have.
    """
    end = prompt.spans["answer"][0]
    pool = (~prompt.demo_mask[:end]).nonzero().flatten()
    if len(pool) < length:
        raise ValueError(
            f"only {len(pool)} non-demonstration tokens before the answer, need {length} for a placebo"
        )
    m = torch.zeros(len(prompt.input_ids), dtype=torch.bool)
    m[pool[-length:]] = True
    return m


def delta_o_study(
    model: torch.nn.Module, prompt: Prompt, seed: int = 0, placebo: torch.Tensor | None = None
) -> DeltaOStudy:
    """Run the prompt with and without its demonstrations (positions kept) and compare Δo with the duals.

    Δo = o_with − o_without at the final position, per layer and head. It splits exactly into an
    *indirect* part o_Z(with) − o(without) (Z's keys/values changed because earlier layers saw D) and
    the *direct* softmax-aware step η (o_D − o_Z). ``placebo`` (a boolean [T] mask of
    non-demonstration tokens) defaults to :func:`placebo_mask`.
    """
    demo = prompt.demo_mask
    with_layers = forward_captured(model, prompt.input_ids)
    ids, pos_ids = drop_span(prompt, demo)
    without_layers = forward_captured(model, ids, position_ids=pos_ids)
    if placebo is None:
        placebo = placebo_mask(prompt, int(demo.sum()))
    elif (placebo & demo).any():
        raise ValueError("the placebo span must not contain demonstration tokens")
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in DeltaOStudy.__dataclass_fields__}
    dec_err, dec_scale = 0.0, 0.0
    for li in sorted(with_layers):
        cap, cap0 = with_layers[li], without_layers[li]
        sp = split_at(cap, demo)
        o_with = cap.out[-1].to(torch.float64)
        o_without = cap0.out[-1].to(torch.float64)
        delta = o_with - o_without
        direct = sp.update
        indirect = sp.out_z - o_without
        q = cap.q[:, -1].to(torch.float64)
        lin = heads_linear_update(q, cap.k.to(torch.float64), cap.v.to(torch.float64), demo)
        pl = split_at(cap, placebo).update
        rnd = torch.randn(delta.shape, generator=gen, dtype=torch.float64)
        norm = delta.norm(dim=-1).clamp_min(1e-300)
        out["cos_linear"].append(cosine(delta, lin))
        out["cos_softmax"].append(cosine(delta, direct))
        out["cos_placebo"].append(cosine(delta, pl))
        out["cos_random"].append(cosine(delta, rnd))
        out["indirect_ratio"].append(indirect.norm(dim=-1) / norm)
        out["direct_ratio"].append(direct.norm(dim=-1) / norm)
        out["share"].append(sp.share)
        out["rebuild_error"].append(relative_error(sp.combined(), o_with))
        dec_err = max(dec_err, float((delta - indirect - direct).abs().max()))
        dec_scale = max(dec_scale, float(delta.abs().max()))
    arrays = {k: torch.stack(v) for k, v in out.items() if v}
    return DeltaOStudy(**arrays, decomposition_error=dec_err / max(dec_scale, 1e-300))

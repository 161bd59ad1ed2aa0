"""Chapter 1 on a real LLM: rebuild every head's attention from the dual split, and compare the
dual's predicted demonstration update with the real change the demonstrations cause.

All rebuilds run in float64 from the float32 tensors captured by :func:`lrgd.llm.forward_captured`.

Two kinds of result come out of here, and the chapters keep them apart:

* the per-head rebuild (:func:`rebuild_errors`) and ``Δo = indirect + direct`` are *identities*: they
  check that the capture of q/k/v and the split are right, and would hold for any split of the tokens;
* how well a dual form *predicts* the real change Δo (:func:`delta_o_study`, summarised by
  :func:`delta_o_summary`) is a measurement that can come out either way. The softmax-aware step is
  one of Δo's two summands (all of it at layer 0), so its agreement with Δo is partly built in; the
  softmax-free form ΔW_ICL q and the placebo span are not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lrgd.dual.algebra import cosine, heads_linear_update, heads_split, relative_error
from lrgd.errors import ConfigError
from lrgd.llm import Captured, forward_captured
from lrgd.rec.prompts import Prompt, build_prompt, drop_span, user_prompt_parts


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
        raise ConfigError(
            f"only {len(pool)} non-demonstration tokens before the answer, need {length} for a placebo; "
            "pass an explicit placebo mask (e.g. the history span)"
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
        raise ConfigError("the placebo span overlaps the demonstrations; choose a span outside them")
    return compare_captures(with_layers, without_layers, demo, placebo, seed)


def compare_captures(
    with_layers: dict[int, Captured],
    without_layers: dict[int, Captured],
    demo: torch.Tensor,
    placebo: torch.Tensor,
    seed: int = 0,
) -> DeltaOStudy:
    """The Δo study of one prompt from its captures with and without the demonstrations (positions kept):
    per layer and head at the final position, Δo against the softmax-aware step, the softmax-free
    ΔW_ICL q, the same formula on the ``placebo`` span and a random direction (seeded); the indirect and
    direct ratios, η, and the rebuild and decomposition errors (identities). Works for any model whose
    attention :func:`lrgd.llm.capture_attention` records (token ids or input embeddings)."""
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


# ----------------------------------------------------------------------------- real prompts, summaries


def sample_users(split, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct test users of ``split``, drawn with ``numpy.random.default_rng(seed)``."""
    users = sorted(split.test)
    if not 1 <= n <= len(users):
        raise ConfigError(f"n_prompts={n} must lie in 1..{len(users)} (the test users of this dataset)")
    rng = np.random.default_rng(seed)
    return [users[i] for i in rng.choice(len(users), size=n, replace=False)]


def user_prompt(lm, ds, split, user: str, n_demos: int, n_candidates: int, seed: int = 0) -> Prompt:
    """``user``'s recommendation prompt (random demonstrations, listed candidates) for the model ``lm``."""
    parts, _, _ = user_prompt_parts(ds, split, user, n_demos=n_demos, n_candidates=n_candidates, seed=seed)
    return build_prompt(lm.tokenizer, parts, chat=lm.info.chat, max_tokens=lm.info.max_positions)


#: what each cosine of :class:`DeltaOStudy` compares Δo with (the chapters' row labels)
PREDICTORS = {
    "cos_linear": "linear ΔW_ICL q",
    "cos_softmax": "softmax-aware η(o_D − o_Z)",
    "cos_placebo": "placebo span",
    "cos_random": "random direction",
}
RATIOS = {"indirect_ratio": "‖indirect‖ / ‖Δo‖", "direct_ratio": "‖direct‖ / ‖Δo‖"}


def stack_studies(studies: list[DeltaOStudy]) -> dict[str, np.ndarray]:
    """The per-prompt studies as arrays [prompts, L, H], one per field of :class:`DeltaOStudy`."""
    names = [*PREDICTORS, *RATIOS, "share"]
    return {f: torch.stack([getattr(s, f) for s in studies]).numpy() for f in names}


def per_prompt_ci(x: np.ndarray, seed: int = 0, n_boot: int = 2000) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95 % CI over prompts of ``x`` [prompts, ...] (the layers and heads
    of a prompt are averaged first: prompts are the independent units)."""
    from lrgd.metrics import bootstrap_ci

    return bootstrap_ci(x.reshape(x.shape[0], -1).mean(1), n_boot=n_boot, seed=seed)


def delta_o_summary(
    stack: dict[str, np.ndarray],
    labels: dict[str, str] | None = None,
    seed: int = 0,
    n_boot: int = 2000,
    per_layer: bool = False,
):
    """One row per quantity: mean cosine (or ratio) over prompts with its bootstrap CI, and with
    ``per_layer`` the mean of each layer. ``labels`` maps a field of ``stack`` to its row label
    (default: the four predictors). Returns a pandas DataFrame."""
    import pandas as pd

    rows = {}
    for f, lab in (labels or PREDICTORS).items():
        rows[lab] = dict(zip(["mean", "CI low", "CI high"], per_prompt_ci(stack[f], seed, n_boot)))
        if per_layer:
            rows[lab] |= {f"layer {li}": float(stack[f][:, li].mean()) for li in range(stack[f].shape[1])}
    return pd.DataFrame(rows).T


def paired_margin(
    stack: dict[str, np.ndarray], a: str, b: str, seed: int = 0, n_boot: int = 2000
) -> tuple[float, float, float]:
    """Mean and CI over prompts of cos(Δo, ``a``) − cos(Δo, ``b``) (paired within each prompt)."""
    return per_prompt_ci(stack[a] - stack[b], seed, n_boot)

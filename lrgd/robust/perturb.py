"""Perturbations of demonstrations and the robust score (chapter 4; our reconstruction).

The paper integrates "perturbations and regularisations" into LRGD; its formulas are not available, so
everything here is **our reconstruction** in dual-model terms. In the dual view a demonstration is a
training example of the implicit gradient step ΔW_D; perturbing it perturbs that training data.

Demonstrations are item-id arrays everywhere in the book: ``history [..., L]`` and ``next_item [...]``
(testbed B's :class:`lrgd.testbeds.recworld.Demos` has ``history [n, k, L]``, ``next_item [n, k]``; the
reader's demonstrations are catalogue item ids). Every perturbation is a pure function

    f(history, next_item, rate, rng, **ctx) -> (history, next_item)

that returns new arrays (inputs are never modified). ``rate`` ∈ [0, 1] is the probability with which each
history position (each demonstration, for ``flip_next``) is touched, independently; rate 0 is the
identity. Every touched position changes: a substituted item is never the item it replaces.

==============  ===========================================================  ===================
name            what a touched position becomes                              ctx it needs
==============  ===========================================================  ===================
``dropout``     removed; the survivors keep their order and move right, the  ``pad_id``
                history is **left-padded** with ``pad_id`` (``left_pad=False``
                replaces the item by ``pad_id`` in place)
``random``      a uniform random other item                                  ``n_items``
``popular``     another item drawn ∝ ``popularity`` (the original excluded)  ``popularity``
``shuffle``     the item of another touched position (one random cycle       —
                through the touched positions; a row with one touch is kept)
``off_domain``  an item of ``off_domain`` *inserted* there; the history      ``off_domain``
                keeps length L by dropping its oldest items
``flip_next``   the demonstration's answer becomes a uniform other item      ``n_items``
==============  ===========================================================  ===================

All but ``flip_next`` touch the history only. :func:`perturb_query` applies the history perturbations to
a query history (test-time noise); :func:`title_noise` is the string-level noise for LLM prompts.

Regularisers (also our reconstruction), for R perturbed copies of M demonstrations:

    robust_score_D = mean_r Effect_D^(r) − λ · std_r Effect_D^(r) − μ · step_D,            (R1)

where ``step_D`` is a per-demonstration dual step size supplied by the model adapter (the demonstration
share Z_D / Z, or ‖ΔW_D‖); std is the population std (ddof = 0). The trust region compares the candidate
distribution with demonstrations, p = softmax(s), with the zero-shot one, q = softmax(s₀):

    KL(p ‖ q) = Σ_c p_c (log p_c − log q_c).                                                 (R2)
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import numbers
from collections.abc import Callable

import numpy as np

from lrgd.errors import ConfigError, DataError

__all__ = [
    "PERTURBATIONS",
    "DemoItems",
    "flip_next",
    "insert_off_domain",
    "item_dropout",
    "kl_from_zero_shot",
    "kl_trust_region",
    "perturb",
    "perturb_query",
    "perturbed_copies",
    "robust_score",
    "shuffle_order",
    "substitute_popular",
    "substitute_random",
    "title_noise",
]


@dataclasses.dataclass(frozen=True)
class DemoItems:
    """The minimal demonstration container: ``history [..., L]`` and ``next_item [...]`` item ids."""

    history: np.ndarray
    next_item: np.ndarray


# ----------------------------------------------------------------------------- perturbations


def _touched(shape: tuple[int, ...], rate: float, rng: np.random.Generator) -> np.ndarray:
    """Bernoulli(rate) mask of the positions a perturbation touches."""
    return rng.random(shape) < rate


def _other_uniform(items: np.ndarray, n_items: int, rng: np.random.Generator) -> np.ndarray:
    """A uniform item ≠ ``items`` (elementwise), from ``range(n_items)``."""
    if n_items < 2:
        raise ConfigError(f"n_items must be ≥ 2 to substitute an item, got {n_items}")
    return (items + 1 + rng.integers(0, n_items - 1, size=items.shape)) % n_items


def item_dropout(history, next_item, rate, rng, *, pad_id: int, left_pad: bool = True, **_):
    """Drop each history item with probability ``rate``; survivors move right, ``pad_id`` fills the left.

    With ``left_pad=False`` a dropped item is replaced by ``pad_id`` in place (positions kept).
    """
    drop = _touched(history.shape, rate, rng)
    if not left_pad:
        return np.where(drop, pad_id, history), next_item.copy()
    order = np.argsort(~drop, axis=-1, kind="stable")  # dropped first, survivors after in their order
    moved = np.take_along_axis(history, order, axis=-1)
    n_drop = drop.sum(-1, keepdims=True)
    return np.where(np.arange(history.shape[-1]) < n_drop, pad_id, moved), next_item.copy()


def substitute_random(history, next_item, rate, rng, *, n_items: int, **_):
    """Replace each history item with probability ``rate`` by a uniform random *other* item."""
    hit = _touched(history.shape, rate, rng)
    return np.where(hit, _other_uniform(history, n_items, rng), history), next_item.copy()


def _other_popular(items: np.ndarray, popularity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An item ≠ ``items`` drawn ∝ ``popularity`` (inverse CDF with the original's mass cut out)."""
    p = np.asarray(popularity, dtype=np.float64)
    if p.ndim != 1 or not np.isfinite(p).all() or (p < 0).any() or (p > 0).sum() < 2:
        raise ConfigError("popularity must be a 1-d vector of finite weights ≥ 0 with ≥ 2 positive entries")
    if items.size and (items.min() < 0 or items.max() >= len(p)):
        raise DataError(f"history item ids must lie in [0, {len(p)}) to use popularity; pad ids first?")
    p = p / p.sum()
    cum = np.cumsum(p)
    p_o, before = p[items], cum[items] - p[items]
    out = items.copy()
    todo = np.ones(items.shape, dtype=bool)
    while todo.any():  # float rounding can land on the original: redraw those (rarely more than once)
        u = rng.random(items.shape) * (1.0 - p_o)
        x = np.where(u >= before, u + p_o, u)
        draw = np.minimum(np.searchsorted(cum, x, side="right"), len(p) - 1)
        out = np.where(todo, draw, out)
        todo = (out == items) | (p[out] == 0)
    return out


def substitute_popular(history, next_item, rate, rng, *, popularity: np.ndarray, **_):
    """Replace each history item with probability ``rate`` by another item drawn ∝ ``popularity``."""
    hit = _touched(history.shape, rate, rng)
    return np.where(hit, _other_popular(history, popularity, rng), history), next_item.copy()


def shuffle_order(history, next_item, rate, rng, **_):
    """Touch each position with probability ``rate``; the touched items move along one random cycle.

    A row with a single touched position is unchanged (nothing to exchange with).
    """
    hit = _touched(history.shape, rate, rng)
    out = history.copy()
    flat_out, flat_hit = out.reshape(-1, history.shape[-1]), hit.reshape(-1, history.shape[-1])
    for row, mask in zip(flat_out, flat_hit):
        pos = np.flatnonzero(mask)
        if len(pos) > 1:
            pos = rng.permutation(pos)
            row[np.roll(pos, 1)] = row[pos].copy()
    return out, next_item.copy()


def insert_off_domain(history, next_item, rate, rng, *, off_domain: np.ndarray, **_):
    """Insert an off-domain item at each slot with probability ``rate``; the oldest items fall off.

    The output keeps length L: its touched slots hold ids drawn uniformly from ``off_domain``, its other
    slots the most recent items of the original history, in order.
    """
    pool = np.asarray(off_domain).ravel()
    if pool.size == 0:
        raise ConfigError("off_domain must name at least one item id")
    ins = _touched(history.shape, rate, rng)
    n_ins = ins.sum(-1, keepdims=True)
    src = np.clip(n_ins + np.cumsum(~ins, axis=-1) - 1, 0, history.shape[-1] - 1)
    kept = np.take_along_axis(history, src, axis=-1)
    return np.where(ins, rng.choice(pool, size=history.shape), kept), next_item.copy()


def flip_next(history, next_item, rate, rng, *, n_items: int, **_):
    """Replace each demonstration's answer with probability ``rate`` by a uniform other item."""
    hit = _touched(next_item.shape, rate, rng)
    return history.copy(), np.where(hit, _other_uniform(next_item, n_items, rng), next_item)


Perturbation = Callable[..., tuple[np.ndarray, np.ndarray]]
PERTURBATIONS: dict[str, Perturbation] = {
    "dropout": item_dropout,
    "random": substitute_random,
    "popular": substitute_popular,
    "shuffle": shuffle_order,
    "off_domain": insert_off_domain,
    "flip_next": flip_next,
}


def _lookup(name: str, rate: float, ctx: dict) -> Perturbation:
    """The registered perturbation ``name``, after checking the rate and the context it needs."""
    if name not in PERTURBATIONS:
        raise ConfigError(f"unknown perturbation {name!r}; choose one of {', '.join(PERTURBATIONS)}")
    if not (isinstance(rate, numbers.Real) and 0.0 <= rate <= 1.0):
        raise ConfigError(f"perturbation rate must be a number in [0, 1], got {rate!r}")
    fn = PERTURBATIONS[name]
    params = inspect.signature(fn).parameters.values()
    need = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    missing = [k for k in need if k not in ctx]
    if missing:
        raise ConfigError(f"perturbation {name!r} needs {', '.join(missing)}=...; pass it to perturb()")
    return fn


def perturb(demos, name: str, rate: float, rng: np.random.Generator, **ctx):
    """A perturbed copy of ``demos`` (any dataclass with ``history`` and ``next_item``, e.g. Demos).

    Other fields (kinds, groups) are kept: they describe where a demonstration came from.
    """
    fn = _lookup(name, rate, ctx)
    history, next_item = np.asarray(demos.history), np.asarray(demos.next_item)
    if history.shape[:-1] != next_item.shape:
        raise DataError(f"demos.history {history.shape} must be next_item {next_item.shape} + [L]")
    history, next_item = fn(history, next_item, rate, rng, **ctx)
    return dataclasses.replace(demos, history=history, next_item=next_item)


def perturb_query(history: np.ndarray, name: str, rate: float, rng: np.random.Generator, **ctx) -> np.ndarray:
    """Test-time noise: a history perturbation applied to query histories ``[n, L]`` → ``[n, L]``."""
    if name == "flip_next":
        raise ConfigError("flip_next changes a demonstration's answer; a query has none (use another name)")
    history = np.asarray(history)
    fn = _lookup(name, rate, ctx)
    return fn(history, np.zeros(history.shape[:-1], dtype=history.dtype), rate, rng, **ctx)[0]


def perturbed_copies(demos, name: str, rate: float, n_copies: int, seed: int = 0, **ctx) -> list:
    """``n_copies`` independently perturbed copies of ``demos`` (copy r uses the stream [seed, r])."""
    if n_copies < 1:
        raise ConfigError(f"n_copies must be ≥ 1, got {n_copies}")
    return [perturb(demos, name, rate, np.random.default_rng([seed, r]), **ctx) for r in range(n_copies)]


def title_noise(title: str, rate: float, rng: np.random.Generator) -> str:
    """Noise on an item title: each word is touched with probability ``rate``.

    A touched word is dropped or gets two adjacent characters swapped (a coin flip; one-character words
    are dropped). The last remaining word is never dropped (it gets a swap instead).
    """
    if not (isinstance(rate, numbers.Real) and 0.0 <= rate <= 1.0):
        raise ConfigError(f"title noise rate must be a number in [0, 1], got {rate!r}")
    words = title.split(" ")
    out = []
    for i, word in enumerate(words):
        if rng.random() >= rate:
            out.append(word)
            continue
        last = i == len(words) - 1 and not out
        if len(word) >= 2 and (last or rng.random() < 0.5):
            j = int(rng.integers(0, len(word) - 1))
            out.append(word[:j] + word[j + 1] + word[j] + word[j + 2 :])
        elif last:
            out.append(word)
    return " ".join(out)


# ----------------------------------------------------------------------------- regularisers


def robust_score(effects, lam: float = 0.0, mu: float = 0.0, step=None) -> np.ndarray:
    """Eq. (R1): ``mean_R − λ·std_R − μ·step`` of Effect_D over R perturbed copies.

    effects: [R, M] or [R, M, N] (copy, demonstration[, user]); step: [M], or [M, N] with per-user
    effects (a step measured at each user's queries), or None when μ = 0. Returns [M] or [M, N].
    Example: effects [[1, 3], [3, 5]], λ = 0.5, μ = 1, step [0.5, 2] → [1, 1.5].
    """
    e = np.asarray(effects, dtype=np.float64)
    if e.ndim not in (2, 3) or e.shape[0] < 1:
        raise ConfigError(f"effects must be [R, M] or [R, M, N] with R ≥ 1, got shape {e.shape}")
    for name, v in (("lam", lam), ("mu", mu)):
        if not (math.isfinite(v) and v >= 0):
            raise ConfigError(f"robust_score: {name} must be finite and ≥ 0, got {v}")
    score = e.mean(0) - lam * e.std(0)
    if mu:
        if step is None:
            raise ConfigError("robust_score: mu > 0 needs step=[M] (e.g. Z_D/Z or ‖ΔW_D‖ per demonstration)")
        s = np.asarray(step, dtype=np.float64)
        if s.shape not in ((e.shape[1],), e.shape[1:]) or not np.isfinite(s).all():
            want = f"({e.shape[1]},)" + (f" or {e.shape[1:]}" if e.ndim == 3 else "")
            raise ConfigError(f"robust_score: step must be finite with shape {want}, got {s.shape}")
        score = score - mu * (s if s.shape == e.shape[1:] else s.reshape(-1, *([1] * (e.ndim - 2))))
    return score


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def kl_from_zero_shot(scores, zero_shot_scores) -> np.ndarray:
    """Eq. (R2): KL(softmax(scores) ‖ softmax(zero_shot_scores)) over candidates, [..., C] → [...].

    Scores are logits over one candidate set (log-softmax inside, so shifting a row changes nothing).
    """
    s, s0 = np.asarray(scores, dtype=np.float64), np.asarray(zero_shot_scores, dtype=np.float64)
    if s.shape != s0.shape or s.ndim < 1:
        raise ConfigError(f"KL needs scores of one shape [..., C], got {s.shape} and {s0.shape}")
    lp, lq = _log_softmax(s), _log_softmax(s0)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def kl_trust_region(scores_of: Callable[[np.ndarray], np.ndarray], zero_shot_scores, eps: float):
    """A trust region for stage 2 (:func:`lrgd.robust.optimise.refine`'s ``trust``): a set S is inside
    when the mean over the rows of Eq. (R2), KL(p_S ‖ p_zero-shot), is at most ``eps`` (∞: everything).

    scores_of: sets [c, k] → candidate scores [c, n, C] of the n rows with each set in the prompt;
    zero_shot_scores: [n, C]. Returns ``trust(sets [c, k]) → bool [c]``.
    """
    if not (isinstance(eps, numbers.Real) and eps >= 0) or math.isnan(eps):
        raise ConfigError(f"the KL trust region's eps must be a number ≥ 0 (inf: no region), got {eps!r}")
    s0 = np.asarray(zero_shot_scores, dtype=np.float64)

    def trust(sets: np.ndarray) -> np.ndarray:
        if math.isinf(eps):
            return np.ones(len(sets), dtype=bool)
        s = np.asarray(scores_of(sets), dtype=np.float64)
        return kl_from_zero_shot(s, np.broadcast_to(s0, s.shape)).mean(-1) <= eps

    return trust

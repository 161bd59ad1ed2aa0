"""Chapter 1's dual model and chapter 3's Effect_D on the reader (:mod:`lrgd.models.reader`).

The reader is a Llama stack run on input embeddings, so chapter 1's tools apply unchanged once a prompt
is turned into embeddings and positions (:func:`forward_inputs`):

* :func:`rebuild` — every head's output at FINAL rebuilt from the softmax split into Z (BOS, query,
  FINAL) and D (the demonstration block), Eq. (6). An **identity of the code** (it holds for any split);
  it checks that the capture of q/k/v is right. It also gives η = Z_D/Z, the share of attention the
  dual step gives the demonstrations.
* :func:`demo_share` — η at FINAL for transition, random and corrupted demonstrations on held-out users:
  whether the dual step weights informative demonstrations more (a measurement); with a pointer
  read-out also the vote weight it gives each kind.
* :func:`delta_o` — the prompt with and without its demonstrations (positions kept), Δo = indirect +
  direct (identity) and the cosine of Δo with the softmax dual step, a placebo span and a random
  direction, as :func:`lrgd.dual.equivalence.delta_o_study` (which reads token ids, not embeddings).
* :func:`effect_study` — Effect_D (:mod:`lrgd.demos.effect`, our reconstruction) of one demonstration
  in a slot right after BOS, with L_u the reader's own ranking loss: cross-entropy of the user's
  **validation** item among candidates. The reader's pointer read-out (when it has one) is a second path
  from D to the scores besides attention: D's next item gets a vote a_D, so Effect_D adds its first-order
  term −⟨∂L_u/∂s, a_D · [tag match]⟩ (:func:`pointer_effect`). It is compared with the true gain
  L_u(zero-shot) − L_u(D) on the **test** item (Spearman ρ, pooled and within users).
* the ``reader-effect`` selector — candidates (transition and random demonstrations with a real source)
  ranked by Effect_D on the validation item; :func:`selection_table` evaluates it through the runner.

Tags. The reader draws an identity tag per distinct item of a prompt. To compare one user's prompts with
and without a demonstration, all of them use one tag map, drawn once per (user, split) over the query,
the candidates and every candidate demonstration (:class:`SlotContext`); the validation and the test
prompt have separate maps, so nothing of the test prompt enters Effect_D. Without a demonstration the
slot is an empty gap in the positions, so the user's tokens keep their positions (as in chapter 3).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from lrgd.demos import effect as fx
from lrgd.dual.equivalence import DeltaOStudy, compare_captures, rebuild_errors
from lrgd.errors import ConfigError, DataError
from lrgd.llm import Captured, capture_attention
from lrgd.models.reader import ROLES, Batch, Catalogue, Reader, assign_slots, collate, encode, user_split
from lrgd.rec.select import Selection, register_selector

__all__ = [
    "EffectStudy",
    "ReaderContext",
    "ReaderEffectSelector",
    "SlotContext",
    "context",
    "delta_o",
    "delta_o_table",
    "demo_share",
    "effect_correlations",
    "effect_study",
    "effects",
    "float64",
    "gain_by_kind",
    "heldout_users",
    "loss_with_alpha",
    "rebuild",
    "selection_table",
    "true_gains",
    "user_prompt",
    "vote_weights",
]  # fmt: skip

KINDS = ("transition", "random", "corrupted")


# ----------------------------------------------------------------------------- forward passes


def demo_mask(b: Batch) -> torch.Tensor:
    """[T] bool: the demonstration block of prompt 0 of ``b`` — from after BOS through the last ``next``
    token (a demonstration's PAD tokens included)."""
    nxt = (b.role[0] == ROLES["next"]).nonzero().flatten()
    mask = torch.zeros(b.role.shape[1], dtype=torch.bool)
    if len(nxt):
        mask[1 : int(nxt[-1]) + 1] = True
    return mask


def forward_inputs(
    model: Reader, cat: Catalogue, b: Batch, drop: torch.Tensor | None = None, gap: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input embeddings [B, T', d], position ids [B, T']) of ``b``.

    ``drop`` [T] removes those positions while the others keep their position ids; ``gap`` shifts every
    position after BOS by ``gap`` (an empty slot right after BOS).
    """
    emb = model.embed(cat, b)
    pos = torch.arange(emb.shape[1])
    pos[1:] += gap
    if drop is not None:
        emb, pos = emb[:, ~drop], pos[~drop]
    return emb, pos.expand(emb.shape[0], -1)


def hidden(model: Reader, emb: torch.Tensor, pos: torch.Tensor, mask: torch.Tensor | None = None):
    """The body's last hidden states [B, T, d]. Without ``mask`` an all-ones mask is passed, so a gap in
    ``pos`` is not read as packed sequences; a 4-D float ``mask`` [B, 1, T, T] is added to the scores."""
    if mask is None:
        mask = torch.ones(emb.shape[:2], dtype=torch.long)
    return model.body(inputs_embeds=emb, position_ids=pos, attention_mask=mask).last_hidden_state


def kept(b: Batch, drop: torch.Tensor | None) -> Batch:
    """``b`` without the ``drop`` positions (the candidates stay)."""
    if drop is None:
        return b
    return replace(b, role=b.role[:, ~drop], item=b.item[:, ~drop], slot=b.slot[:, ~drop])


def pointer_weight(model: Reader, h_final: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The pointer read-out's weight a = softplus(⟨W_q h_FINAL, W_k h⟩/√d) of hidden states ``h``
    [..., T, d] for ``h_final`` [..., d] → [..., T] (the weights inside :meth:`Reader.read`)."""
    q = model.pointer["q"](h_final)
    return nn.functional.softplus((model.pointer["k"](h) * q[..., None, :]).sum(-1) / math.sqrt(h.shape[-1]))


def candidate_scores(
    model: Reader, cat: Catalogue, b: Batch, hs: torch.Tensor, pointer_scale: float = 1.0
) -> torch.Tensor:
    """Scores [B, C] from the last hidden states ``hs`` [B, T, d] of ``b``, as :meth:`Reader.forward`:
    ⟨W_o h_FINAL, x(c)⟩/√d, plus ``pointer_scale`` × the pointer read-out when the reader has one."""
    h = hs[:, -1]
    c = model.items(cat, b.cand, b.cand_slot)
    out = (model.out(h)[:, None, :] * c).sum(-1) / math.sqrt(h.shape[-1])
    if getattr(model, "pointer", None) is not None:
        out = out + pointer_scale * model.read(hs, b)
    return out


def scores(model: Reader, cat: Catalogue, b: Batch, drop=None, gap: int = 0, mask=None) -> torch.Tensor:
    """Candidate scores [B, C] of ``b`` (see :func:`forward_inputs` for ``drop`` and ``gap``)."""
    emb, pos = forward_inputs(model, cat, b, drop, gap)
    return candidate_scores(model, cat, kept(b, drop), hidden(model, emb, pos, mask))


def captured(model: Reader, cat: Catalogue, b: Batch, drop=None, gap: int = 0) -> dict[int, Captured]:
    """Every layer's post-RoPE q/k/v and attention output for prompt 0 of ``b`` (one forward pass)."""
    emb, pos = forward_inputs(model, cat, b, drop, gap)
    with torch.no_grad(), capture_attention(model.body) as layers:
        hidden(model, emb[:1], pos[:1])
    return dict(layers)


# ----------------------------------------------------------------------------- 1. the rebuild


def rebuild(model: Reader, cat: Catalogue, b: Batch, demo: torch.Tensor | None = None):
    """Chapter 1's per-head rebuild at FINAL for prompt 0 of ``b`` (fp32 or fp64 capture, fp64 rebuild).

    Returns a DataFrame, one row per (layer, head): ``identity_error``, the relative error of the
    Z/D softmax split's rebuild against the head's own output (an identity of the code, ~1e-7 in fp32),
    and ``share`` η = Z_D/Z. ``demo`` [T] defaults to :func:`demo_mask`.
    """
    import pandas as pd

    demo = demo_mask(b) if demo is None else demo
    rb = rebuild_errors(captured(model, cat, b), demo)
    n_layers, n_heads = rb["error"].shape
    return pd.DataFrame(
        {
            "layer": np.repeat(np.arange(n_layers), n_heads),
            "head": np.tile(np.arange(n_heads), n_layers),
            "identity_error": rb["error"].reshape(-1).numpy(),
            "share": rb["share"].reshape(-1).numpy(),
        }
    )


# ----------------------------------------------------------------------------- 3. the Δo study


def placebo_mask(demo: torch.Tensor) -> torch.Tensor:
    """The last non-demonstration tokens before FINAL, as many as the demonstrations have (fewer when
    the query block is shorter): the query end, ordinary zero-shot tokens."""
    t = len(demo)
    pool = (~demo[: t - 1]).nonzero().flatten()[1:]  # not BOS, not FINAL
    n = min(int(demo.sum()), len(pool))
    if n == 0:
        raise ConfigError("no demonstration or no query token: a placebo span needs both")
    m = torch.zeros(t, dtype=torch.bool)
    m[pool[-n:]] = True
    return m


def delta_o(model: Reader, cat: Catalogue, b: Batch, seed: int = 0, placebo=None) -> DeltaOStudy:
    """Prompt 0 of ``b`` with and without its demonstrations (positions kept): chapter 1's Δo study.

    Δo = o_with − o_without at FINAL per layer and head splits exactly into the *indirect* part
    o_Z(with) − o(without) and the *direct* softmax step η (o_D − o_Z) (``decomposition_error``: an
    identity). The cosines compare Δo with the direct step, the softmax-free ΔW_ICL q, the same formula
    on a placebo span (:func:`placebo_mask`) and a random direction (seeded).
    """
    demo = demo_mask(b)
    placebo = placebo_mask(demo) if placebo is None else placebo
    if (placebo & demo).any():
        raise ConfigError("the placebo span overlaps the demonstrations; choose a span outside them")
    return compare_captures(captured(model, cat, b), captured(model, cat, b, drop=demo), demo, placebo, seed)


# ----------------------------------------------------------------------------- one user's prompts


@dataclass
class SlotContext:
    """One user's prompt without demonstrations and a tag map shared by all its variants.

    ``query``, ``cands`` catalogue indices; ``label`` the target's column in ``cands``; ``slots`` item →
    tag over the query, the candidates and every candidate demonstration.
    """

    query: list[int]
    cands: list[int]
    label: int
    slots: dict[int, int]


def slot_context(
    query: Sequence[int], cands: Sequence[int], target: int, demos, sizes, rng: np.random.Generator
) -> SlotContext:
    """The :class:`SlotContext` of a query, its candidates (holding ``target``) and candidate ``demos``
    [(history indices, next index)]; the tag map is drawn with ``rng``."""
    q = list(query)[-sizes.query_len :]
    items = [*q, *cands, *(i for h, n in demos for i in (*list(h)[-sizes.demo_history :], n))]
    return SlotContext(q, list(cands), list(cands).index(target), assign_slots(items, sizes.n_tags, rng))


def encode_with(sc: SlotContext, demos, sizes) -> tuple[np.ndarray, ...]:
    """:func:`lrgd.models.reader.encode`'s layout with the context's tags instead of fresh ones."""
    role, item, _, cand, _ = encode(demos, sc.query, sc.cands, sizes, np.random.default_rng(0))
    slot = np.array([sc.slots.get(int(i), 0) for i in item])
    return role, item, slot, cand, np.array([sc.slots[int(c)] for c in cand])


def batch_of(sc: SlotContext, variants: Sequence[Sequence], sizes) -> Batch:
    """One prompt per entry of ``variants`` (each a list of demonstrations), labelled with the target."""
    return collate([encode_with(sc, d, sizes) for d in variants], [sc.label] * len(variants))


def _ce(s: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(s.double(), label, reduction="none")


@torch.no_grad()
def true_gains(model: Reader, cat: Catalogue, sc: SlotContext, demos, sizes) -> tuple[np.ndarray, float]:
    """(L_u(zero-shot) − L_u(D) for each demonstration [M], L_u(zero-shot)): two forward passes.

    D sits right after BOS; the zero-shot prompt leaves its positions empty (a gap of m + 1)."""
    gap = sizes.demo_history + 1
    zero = float(_ce(scores(model, cat, batch_of(sc, [[]], sizes), gap=gap), torch.tensor([sc.label]))[0])
    b = batch_of(sc, [[d] for d in demos], sizes)
    return zero - _ce(scores(model, cat, b), b.label).numpy(), zero


@torch.no_grad()
def loss_with_alpha(model: Reader, cat: Catalogue, sc: SlotContext, demo, sizes, alpha: float) -> float:
    """L_u with ``demo`` in the slot, every later token's attention weight on it scaled by ``alpha`` (an
    additive log α on those scores) and its pointer vote scaled by ``alpha``: α = 0 is the zero-shot
    prompt, α = 1 the plain one."""
    b = batch_of(sc, [[demo]], sizes)
    emb, pos = forward_inputs(model, cat, b)
    t, n = emb.shape[1], sizes.demo_history + 1
    m = torch.full((t, t), -math.inf, dtype=emb.dtype).triu(1)
    m[n + 1 :, 1 : n + 1] += math.log(alpha) if alpha > 0 else -math.inf
    s = candidate_scores(model, cat, b, hidden(model, emb, pos, m[None, None]), pointer_scale=alpha)
    return float(_ce(s, b.label)[0])


@dataclass
class UserPass:
    """The zero-shot prompt's forward and backward pass: chapter 3's :class:`lrgd.demos.effect.UserState`
    (q, Attn_Z, ∂L_u/∂o, log Z_Z after BOS), and for the pointer read-out h_FINAL [d] and ∂L_u/∂s [C]."""

    state: fx.UserState
    h_final: torch.Tensor
    dlds: torch.Tensor
    cand_slot: torch.Tensor

    @property
    def loss(self) -> float:
        return self.state.loss


@dataclass
class DemoPass:
    """A demonstration's keys/values at its slot (:class:`lrgd.demos.effect.DemoState`), the last hidden
    state at its next item [d] and that item's tag."""

    state: fx.DemoState
    h_next: torch.Tensor
    next_slot: int


def user_state(model: Reader, cat: Catalogue, sc: SlotContext, sizes) -> UserPass:
    """One forward and one backward pass of L_u on the zero-shot prompt (gap of m + 1 after BOS), with q,
    Attn_Z, ∂L_u/∂o and log Z_Z at every position after BOS (the query block and FINAL), per layer."""
    b = batch_of(sc, [[]], sizes)
    emb, pos = forward_inputs(model, cat, b, gap=sizes.demo_history + 1)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        emb = emb.detach().requires_grad_(True)
        with torch.enable_grad(), capture_attention(model.body, keep_graph=True) as layers:
            hs = hidden(model, emb, pos)
            s = candidate_scores(model, cat, b, hs)
            s.retain_grad()
            loss = _ce(s, b.label)[0]
            loss.backward()
    finally:
        for p, f in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(f)
    f64 = torch.float64
    index = torch.arange(1, emb.shape[1])
    q, out, grad, log_z, scaling = [], [], [], [], []
    for li in sorted(layers):
        cap = layers[li]
        qi = cap.q[:, index].to(f64)
        sc_ = torch.einsum("hpd,htd->hpt", qi, cap.k.to(f64)) * cap.scaling
        causal = torch.arange(sc_.shape[-1])[None, :] <= index[:, None]
        log_z.append(torch.logsumexp(sc_.masked_fill(~causal, -math.inf), dim=-1))
        q.append(qi)
        out.append(cap.out[index].transpose(0, 1).to(f64))
        grad.append(cap.live_out.grad[0, index].transpose(0, 1).to(f64))
        scaling.append(cap.scaling)
    state = fx.UserState(q, out, grad, log_z, scaling, float(loss.detach()))
    return UserPass(state, hs[0, -1].detach(), s.grad[0].double(), b.cand_slot[0])


@torch.no_grad()
def demo_state(model: Reader, cat: Catalogue, sc: SlotContext, demo, sizes) -> DemoPass:
    """The demonstration's keys and values at its slot per layer and its last hidden state at its next
    item: one forward pass of BOS + D (causal: D's states in any prompt are these)."""
    b = batch_of(sc, [[demo]], sizes)
    n = sizes.demo_history + 1
    emb, pos = forward_inputs(model, cat, b)
    with capture_attention(model.body) as layers:
        hs = hidden(model, emb[:, : n + 1], pos[:, : n + 1])
    order = sorted(layers)
    state = fx.DemoState([layers[i].k[:, 1:] for i in order], [layers[i].v[:, 1:] for i in order])
    return DemoPass(state, hs[0, -1], sc.slots[int(demo[1])])


@torch.no_grad()
def pointer_effect(model: Reader, up: UserPass, dps: Sequence[DemoPass]) -> np.ndarray:
    """−⟨∂L_u/∂s, Δs⟩ for each demonstration's pointer vote Δs_c = a_D · [tag of D's next item = tag of c]
    with h_FINAL of the zero-shot prompt [M] (zero without a pointer read-out). The vote is linear in the
    α of :func:`loss_with_alpha`, so this term is the same for both rates."""
    if getattr(model, "pointer", None) is None:
        return np.zeros(len(dps))
    a = pointer_weight(model, up.h_final, torch.stack([d.h_next for d in dps])).double()  # [M]
    same = torch.tensor([[float(d.next_slot == int(c)) for c in up.cand_slot] for d in dps], dtype=a.dtype)
    return (-(a[:, None] * same * up.dlds[None, :]).sum(-1)).numpy()


def effects(model: Reader, cat: Catalogue, sc: SlotContext, demos, sizes, rates=fx.RATES) -> dict:
    """Effect_D of each demonstration for this context [M] per rate: chapter 3's attention term
    −Σ ⟨Δo_D, ∂L_u/∂o⟩ (:func:`lrgd.demos.effect.effect_matrix`) plus the pointer vote's term
    (:func:`pointer_effect`). One forward + backward pass of the zero-shot prompt and one short pass per
    demonstration."""
    up = user_state(model, cat, sc, sizes)
    dps = [demo_state(model, cat, sc, d, sizes) for d in demos]
    ptr = pointer_effect(model, up, dps)
    states = [d.state for d in dps]
    return {r: fx.effect_matrix(states, [up.state], rate=r)[:, 0].numpy() + ptr for r in rates}


# ----------------------------------------------------------------------------- the dataset side


@dataclass
class ReaderContext:
    """What the studies need: the runner (data, pools, candidates), a dataset, the reader and its sizes."""

    runner: object
    dataset: str
    model: Reader
    sizes: object
    model_name: str = "trained:reader-anon"
    seed: int = 0
    history_len: int = 10
    n_candidates: int = 20
    guard: str = "own"  # what demonstrations may not show (lrgd.rec.select.GUARDS); the readers' is "own"

    @property
    def cat(self) -> Catalogue:
        return self.runner.catalogue(self.dataset, self.sizes.titles)

    def cfg(self, method: str, k: int, split: str = "test", **params):
        from lrgd.rec.conditions import EvalConfig

        return EvalConfig(self.dataset, method, k=k, split=split, model=self.model_name, guard=self.guard,
                          n_candidates=self.n_candidates, history_len=self.history_len, seed=self.seed,
                          params=params)  # fmt: skip

    @property
    def pool(self):
        return self.runner.pool(self.cfg("random", 1))


def context(runner, dataset: str, model_name: str = "trained:reader-anon", model=None, sizes=None, seed=0):
    """A :class:`ReaderContext`; ``model``/``sizes`` default to the runner's trained ``model_name``."""
    model = runner.trained(model_name).model if model is None else model
    sizes = runner.reader_sizes(model_name) if sizes is None else sizes
    return ReaderContext(runner, dataset, model.eval(), sizes, model_name, seed)


def heldout_users(ctx: ReaderContext, n: int) -> list[str]:
    """The first ``n`` eligible test users (the runner's seeded order) that never supplied a training
    query: on a training catalogue the reader's held-out share, on any other catalogue every user."""
    order, _ = ctx.runner.eligible_users(ctx.dataset, "test", ctx.seed)
    if ctx.dataset in ctx.runner.profile.reader.train_datasets and ctx.sizes.heldout_user_share > 0:
        held = {ctx.cat.users[i] for i in user_split(ctx.cat, ctx.sizes.heldout_user_share)[1]}
        order = [u for u in order if u in held]
    if len(order) < n:
        raise ConfigError(f"{ctx.dataset}: only {len(order)} held-out test users, asked for n_users={n}")
    return order[:n]


def _ids(ctx: ReaderContext, demos: Sequence[tuple[Sequence[str], str]]) -> list[tuple[list[int], int]]:
    ix = ctx.cat.index
    return [([ix[i] for i in h], ix[n]) for h, n in demos]


def _user_rng(ctx: ReaderContext, user: str, tag: int) -> np.random.Generator:
    return np.random.default_rng([ctx.seed, zlib.crc32(user.encode()), tag])


def corrupt(ctx: ReaderContext, user: str, demos, rng: np.random.Generator) -> list[tuple[list[int], int]]:
    """Each demonstration with its next item replaced by a random titled item (not its own next item,
    never one of the user's held-out items)."""
    held = {ctx.cat.index[i] for i in ctx.pool.held_out(user).ids if i in ctx.cat.index}
    out = []
    for h, n in demos:
        while True:
            j = int(ctx.cat.titled[rng.integers(len(ctx.cat.titled))])
            if j != n and j not in held:
                break
        out.append((list(h), j))
    return out


def user_demos(ctx: ReaderContext, user: str, kind: str, k: int) -> tuple[list, int]:
    """(k demonstrations of ``kind`` for the user's test prompt as catalogue indices, fallbacks): from the
    ``recent`` selector (transition), ``random``, or transition ones with a random next item (corrupted)."""
    if kind not in KINDS:
        raise ConfigError(f"unknown demonstration kind {kind!r}; choose one of {', '.join(KINDS)}")
    cfg = ctx.cfg("random" if kind == "random" else "recent", k)
    hist, _ = ctx.runner.target(cfg, user)
    sel = ctx.runner.select(cfg, user, hist)
    demos = _ids(ctx, ctx.runner.demo_ids(cfg, sel))
    if kind == "corrupted":
        demos = corrupt(ctx, user, demos, _user_rng(ctx, user, 5))
    return demos, sel.fallback


def testing_context(ctx: ReaderContext, user: str, demos=(), tag: int = 0) -> SlotContext:
    """The user's test prompt: test history, the runner's saved candidates, one tag map."""
    cfg = ctx.cfg("zero-shot", 0)
    hist, target = ctx.runner.target(cfg, user)
    cands = ctx.runner.candidates(cfg, [user], save=False)[user]
    ix = ctx.cat.index
    return slot_context([ix[i] for i in hist], [ix[c] for c in cands], ix[target], demos, ctx.sizes,
                        _user_rng(ctx, user, 100 + tag))  # fmt: skip


def validation_context(ctx: ReaderContext, user: str, demos=()) -> SlotContext:
    """The user's validation prompt: training history → validation item among ``n_candidates`` − 1
    titled items outside that history, drawn here (seeded) so that nothing about the test item — not even
    its absence from the negatives — enters; its own tag map."""
    split = ctx.runner.data(ctx.dataset).split
    if user not in split.valid:
        raise DataError(f"{ctx.dataset}: user {user!r} has no validation item")
    hist, target = split.valid[user]
    ix, cat = ctx.cat.index, ctx.cat
    seen = {ix[i] for i in hist} | {ix[target]}
    rng = _user_rng(ctx, user, 17)
    negs: list[int] = []
    for j in rng.permutation(cat.titled):
        if int(j) not in seen:
            negs.append(int(j))
            if len(negs) == ctx.n_candidates - 1:
                break
    cands = [negs[j] if j < len(negs) else ix[target] for j in rng.permutation(len(negs) + 1)]
    return slot_context([ix[i] for i in hist], cands, ix[target], demos, ctx.sizes, _user_rng(ctx, user, 18))


def user_prompt(ctx: ReaderContext, user: str, kind: str = "transition", k: int = 4) -> Batch:
    """The user's test prompt with ``k`` demonstrations of ``kind`` (one prompt, for :func:`rebuild` and
    :func:`delta_o`)."""
    demos, _ = user_demos(ctx, user, kind, k) if k else ([], 0)
    return batch_of(testing_context(ctx, user, demos), [demos], ctx.sizes)


# ----------------------------------------------------------------------------- 2. demonstration share


@torch.no_grad()
def vote_weights(model: Reader, cat: Catalogue, b: Batch) -> np.ndarray:
    """The pointer read-out's weight a_j of each demonstration's next item in prompt 0 of ``b`` [k]
    (empty without a pointer read-out)."""
    if getattr(model, "pointer", None) is None:
        return np.zeros(0)
    emb, pos = forward_inputs(model, cat, b)
    hs = hidden(model, emb[:1], pos[:1])[0]
    return pointer_weight(model, hs[-1], hs)[b.role[0] == ROLES["next"]].numpy()


def demo_share(ctx: ReaderContext, users: Sequence[str], k: int = 4, n_boot: int = 2000):
    """η = Z_D/Z at FINAL per layer and head for transition, random and corrupted demonstrations (the
    same k for all) on ``users``, with bootstrap CIs over users and the paired differences; with a
    pointer read-out also its mean vote weight a_j per demonstration (:func:`vote_weights`).

    Returns a tidy DataFrame (layer, head, quantity, mean, lo, hi): layer = head = "all" is the mean of η
    over heads, layer = "pointer" the vote weight. ``attrs``: ``fallback`` (transition demonstrations
    filled in at random), ``max_identity_error`` (the rebuild's, an identity).
    """
    import pandas as pd

    from lrgd.metrics import bootstrap_ci

    per: dict[str, list[np.ndarray]] = {kind: [] for kind in KINDS}
    fallback, worst = 0, 0.0
    for u in users:
        for kind in KINDS:
            demos, fb = user_demos(ctx, u, kind, k)
            fallback += fb if kind == "transition" else 0
            b = batch_of(testing_context(ctx, u, demos), [demos], ctx.sizes)
            df = rebuild(ctx.model, ctx.cat, b)
            worst = max(worst, float(df["identity_error"].max()))
            eta = df["share"].to_numpy()
            a = vote_weights(ctx.model, ctx.cat, b)
            per[kind].append(np.concatenate([eta, [eta.mean()], [a.mean()] if len(a) else []]))
    x = {kind: np.stack(v) for kind, v in per.items()}  # [users, L·H + 1 (+ 1)]
    x["transition − random"] = x["transition"] - x["random"]
    x["transition − corrupted"] = x["transition"] - x["corrupted"]
    heads = ctx.model.body.config.num_attention_heads
    n_eta = len(df)
    where = [divmod(j, heads) for j in range(n_eta)] + [("all", "all"), ("pointer", "vote a")]
    rows = []
    for q, v in x.items():
        mean, lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=ctx.seed)
        for j in range(v.shape[1]):
            rows.append({"layer": where[j][0], "head": where[j][1], "quantity": q,
                         "mean": mean[j], "lo": lo[j], "hi": hi[j]})  # fmt: skip
    out = pd.DataFrame(rows)
    out.attrs.update(fallback=fallback, demos=k * len(users), users=len(users), max_identity_error=worst)
    return out


def float64(model: Reader, cat: Catalogue) -> tuple[Reader, Catalogue]:
    """Float64 copies of the reader and of the catalogue arrays it reads."""
    import copy

    cat64 = replace(cat, title=cat.title.astype(np.float64), feats=cat.feats.astype(np.float64))
    return copy.deepcopy(model).double().eval(), cat64


def delta_o_table(
    ctx: ReaderContext, users: Sequence[str], k: int = 2, kind: str = "transition", dtype=torch.float64
):
    """Chapter 1's Δo study on ``users``' test prompts with ``k`` demonstrations of ``kind``: the summary
    of :func:`lrgd.dual.equivalence.delta_o_summary` (mean, CI over prompts, per layer), its stacked
    arrays and the largest decomposition and rebuild errors (identities).

    By default the reader runs in float64 (:func:`float64`): Δo is a difference of two nearly equal
    outputs, and in heads that give the demonstrations a share η of 1e-5 it is below float32's resolution,
    which would turn its cosines and ratios into rounding noise."""
    from lrgd.dual.equivalence import PREDICTORS, RATIOS, delta_o_summary, stack_studies

    model, cat = float64(ctx.model, ctx.cat) if dtype == torch.float64 else (ctx.model, ctx.cat)
    prompts = [user_prompt(ctx, u, kind, k) for u in users]
    studies = [delta_o(model, cat, b, seed=i) for i, b in enumerate(prompts)]
    stack = stack_studies(studies)
    table = delta_o_summary(stack, {**PREDICTORS, **RATIOS}, seed=ctx.seed, per_layer=True)
    errors = {
        "decomposition_error": max(s.decomposition_error for s in studies),
        "rebuild_error": max(float(s.rebuild_error.max()) for s in studies),
    }
    return table, stack, errors


# ----------------------------------------------------------------------------- 4. Effect_D vs true gain


@dataclass
class Candidate:
    """A candidate demonstration for one user: its kind, its source (None when corrupted), as indices."""

    kind: str
    source: tuple[str, int] | None
    history: list[int]
    next_item: int

    @property
    def demo(self) -> tuple[list[int], int]:
        return self.history, self.next_item


def candidate_pool(ctx: ReaderContext, user: str, n: int, corrupted: bool = True) -> list[Candidate]:
    """``n`` candidate demonstrations for ``user``: transitions anchored at the test history's recent
    items (the ``recent`` stream; random fill-ins are labelled random), random ones (the ``random``
    stream), and with ``corrupted`` transitions with a random next item — a third each, else halves.
    Every real one passes the runner's leakage guard."""
    pool, cfg = ctx.pool, ctx.cfg("recent", 1)
    hist, _ = ctx.runner.target(cfg, user)
    n_corr = n // 3 if corrupted else 0
    n_trans = (n - n_corr + 1) // 2
    sel = pool.take(user, n_trans, pool.recent_stream(user, hist), fill_random=True)
    chosen = set(sel.sources)
    rand = pool.take(user, n - n_corr - n_trans, (s for s in pool.random_stream(user) if s not in chosen))
    out = []
    for j, src in enumerate(sel.sources + rand.sources):
        kind = "transition" if j < n_trans - sel.fallback else "random"
        ids = pool.make(*src)[1]
        out.append(Candidate(kind, src, [ctx.cat.index[i] for i in ids[:-1]], ctx.cat.index[ids[-1]]))
    trans = [c.demo for c in out if c.kind == "transition"] or [c.demo for c in out]
    bad = corrupt(ctx, user, [trans[j % len(trans)] for j in range(n_corr)], _user_rng(ctx, user, 6))
    return out + [Candidate("corrupted", None, h, x) for h, x in bad]


@dataclass
class EffectStudy:
    """Effect_D and true gains of M candidate demonstrations × N users ([M, N] arrays)."""

    users: list[str]
    kinds: np.ndarray  # [M, N] str
    effect: dict[str, np.ndarray]  # rate → [M, N]: Effect_D on the validation item
    gain_valid: np.ndarray  # true gain on the validation item (same prompts as Effect_D)
    gain_test: np.ndarray  # true gain on the test item
    loss_zero_test: np.ndarray  # [N]
    seconds: dict[str, float] = field(default_factory=dict)


def effect_study(ctx: ReaderContext, users: Sequence[str], n_demos: int = 30) -> EffectStudy:
    """Effect_D (validation item) and the true gain (test item, and validation item) of ``n_demos``
    candidates (:func:`candidate_pool`) for each user."""
    kinds, eff, gv, gt, lz = [], {r: [] for r in fx.RATES}, [], [], []
    sec = {"effect": 0.0, "true_gain": 0.0}
    for u in users:
        cands = candidate_pool(ctx, u, n_demos)
        demos = [c.demo for c in cands]
        kinds.append([c.kind for c in cands])
        t0 = time.perf_counter()
        val = validation_context(ctx, u, demos)
        for r, v in effects(ctx.model, ctx.cat, val, demos, ctx.sizes).items():
            eff[r].append(v)
        t1 = time.perf_counter()
        gv.append(true_gains(ctx.model, ctx.cat, val, demos, ctx.sizes)[0])
        g, z = true_gains(ctx.model, ctx.cat, testing_context(ctx, u, demos), demos, ctx.sizes)
        gt.append(g)
        lz.append(z)
        sec["effect"] += t1 - t0
        sec["true_gain"] += time.perf_counter() - t1
    col = lambda x: np.stack(x, axis=1)  # noqa: E731
    return EffectStudy(list(users), col(kinds), {r: col(v) for r, v in eff.items()}, col(gv), col(gt),
                       np.array(lz), sec)  # fmt: skip


def effect_correlations(st: EffectStudy, n_boot: int = 1000, seed: int = 0):
    """Spearman ρ, pooled over (demonstration, user) pairs (CI resampling users) and within users (CI
    over users), of each predictor against each true gain. Returns a DataFrame."""
    import pandas as pd

    from lrgd.metrics import spearman_ci, within_user_spearman_ci

    groups = np.broadcast_to(np.arange(len(st.users)), st.gain_test.shape)
    pairs = {
        "Effect_D (secant) → test gain": (st.effect["secant"], st.gain_test),
        "Effect_D (derivative) → test gain": (st.effect["derivative"], st.gain_test),
        "Effect_D (secant) → validation gain (first-order accuracy)": (st.effect["secant"], st.gain_valid),
        "validation true gain → test gain (exact, validation only)": (st.gain_valid, st.gain_test),
    }
    rows = {}
    for name, (a, b) in pairs.items():
        p, plo, phi = spearman_ci(a, b, n_boot=n_boot, seed=seed, groups=groups)
        w, wlo, whi = within_user_spearman_ci(a, b, n_boot=n_boot, seed=seed)
        rows[name] = {"pooled ρ": p, "pooled lo": plo, "pooled hi": phi,
                      "within-user ρ": w, "within lo": wlo, "within hi": whi}  # fmt: skip
    return pd.DataFrame(rows).T


def gain_by_kind(st: EffectStudy, n_boot: int = 2000, seed: int = 0):
    """Mean test gain and mean Effect_D (secant) per demonstration kind: per user the mean over that kind's
    candidates, then mean and bootstrap CI over users. Returns a DataFrame."""
    import pandas as pd

    from lrgd.metrics import bootstrap_ci

    rows = {}
    for kind in KINDS:
        m = st.kinds == kind
        ok = m.any(0)
        for name, x in (("test gain", st.gain_test), ("Effect_D", st.effect["secant"])):
            per_user = np.where(m, x, 0).sum(0)[ok] / m.sum(0)[ok]
            mean, lo, hi = bootstrap_ci(per_user, n_boot=n_boot, seed=seed)
            rows.setdefault(kind, {}).update({name: mean, f"{name} lo": lo, f"{name} hi": hi})
        rows[kind]["candidates"] = int(m.sum())
    return pd.DataFrame(rows).T


# ----------------------------------------------------------------------------- 5. Effect_D selection


@register_selector("reader-effect")
class ReaderEffectSelector:
    """Candidates (half transition, half random; real sources only) ranked by the reader's Effect_D on the
    user's validation item; the best ``k`` that pass the leakage guard, random fill-ins counted."""

    effect_pool: int = field(default=30, metadata={"help": "candidate demonstrations ranked by Effect_D"})
    effect_rate: str = field(default="secant", metadata={"help": "η = Z_D/Z (secant) or Z_D/Z_Z"})
    code: ClassVar[tuple[str, ...]] = ("lrgd.demos.effect", "lrgd.models.reader", "lrgd.llm")

    def validate(self) -> None:
        if self.effect_pool < 1:
            raise ConfigError(f"--effect-pool must be ≥ 1, got {self.effect_pool}")
        if self.effect_rate not in fx.RATES:
            raise ConfigError(f"--effect-rate must be one of {', '.join(fx.RATES)}, got {self.effect_rate!r}")

    def scores(self, ctx: ReaderContext, user: str, demos: list) -> np.ndarray:
        """The score [M] that ranks ``demos`` for ``user``: their Effect_D on the validation item."""
        return np.asarray(effects(ctx.model, ctx.cat, validation_context(ctx, user, demos), demos, ctx.sizes,
                                  rates=(self.effect_rate,))[self.effect_rate])  # fmt: skip

    def ranking(self, ctx: ReaderContext, user: str) -> tuple[list[tuple[str, int]], list[float]]:
        """(sources best first, their :meth:`scores`) for ``user``."""
        cands = candidate_pool(ctx, user, self.effect_pool, corrupted=False)
        e = self.scores(ctx, user, [c.demo for c in cands])
        order = sorted(range(len(cands)), key=lambda j: (-float(e[j]), j))
        return [cands[j].source for j in order], [float(e[j]) for j in order]

    def select(self, runner, cfg, user: str, k: int, history: Sequence[str]) -> Selection:
        from lrgd.rec.runner import is_trained

        if not is_trained(cfg.model):
            raise ConfigError(
                f"reader-effect ranks demonstrations with a trained reader, not {cfg.model!r}; "
                "use --model trained:reader or trained:reader-anon"
            )
        ctx = replace(context(runner, cfg.dataset, cfg.model, seed=cfg.seed), history_len=cfg.history_len,
                      n_candidates=cfg.n_candidates, guard=cfg.guard)  # fmt: skip
        weights = runner.model_source(cfg.model)[1]
        key = (type(self).__name__, cfg.dataset, cfg.model, weights, cfg.history_len, cfg.seed,
               cfg.n_candidates, cfg.guard, tuple(sorted(asdict(self).items())), user)  # fmt: skip
        order, scores_ = runner.memo(key, lambda: self.ranking(ctx, user))
        sel = runner.pool(cfg).take(user, k, iter(order), fill_random=True)
        chosen = dict(zip(order, scores_, strict=True))
        effect = [round(chosen[s], 6) if s in chosen else None for s in sel.sources]
        return replace(sel, extra={"effect": effect})  # Effect_D of the chosen demonstrations


#: perturbations the robust reader score draws copies with (item-level; ``popular`` needs counts)
ROBUST_PERTURBATIONS = ("random", "flip_next", "shuffle", "dropout")


def perturbed_variants(
    cat: Catalogue, demos, name: str, rate: float, copies: int, rng: np.random.Generator
) -> list[tuple[list[int], int]]:
    """``copies`` perturbed copies of ``demos`` [(history indices, next index)], copy-major ([R · M]):
    :func:`lrgd.robust.perturb.perturb` on the catalogue's titled items (a substituted item is a uniform
    titled one); a demonstration whose history is dropped entirely keeps its most recent item."""
    from lrgd.robust import perturb as pt

    titled = np.asarray(cat.titled)
    pos = {int(i): j for j, i in enumerate(titled)}
    ctx = {"n_items": len(titled), "pad_id": -1}
    out = []
    for _ in range(copies):
        for h, x in demos:
            d = pt.perturb(pt.DemoItems(np.array([[pos[int(i)] for i in h]]), np.array([pos[int(x)]])),
                           name, rate, rng, **ctx)  # fmt: skip
            kept = [int(titled[i]) for i in d.history[0] if i != -1] or [int(h[-1])]
            out.append((kept, int(titled[int(d.next_item[0])])))
    return out


@register_selector("reader-robust-effect")
class ReaderRobustEffectSelector(ReaderEffectSelector):
    """``reader-effect`` ranked by the robust score of chapter 4 (Eq. (R1), our reconstruction): the mean
    minus λ times the standard deviation of Effect_D over ``copies`` perturbed copies of each candidate
    (the copies are scored; the demonstration shown is the candidate itself)."""

    copies: int = field(default=4, metadata={"help": "perturbed copies R per candidate demonstration"})
    lam: float = field(default=1.0, metadata={"help": "λ: the weight of Effect_D's spread over the copies"})
    perturbation: str = field(default="random", metadata={"help": "the perturbation drawing the copies"})
    rate: float = field(default=0.5, metadata={"help": "share of a copy's positions perturbed"})
    code: ClassVar[tuple[str, ...]] = (*ReaderEffectSelector.code, "lrgd.robust.perturb")

    def validate(self) -> None:
        super().validate()
        if self.copies < 1 or not (math.isfinite(self.lam) and self.lam >= 0) or not 0 <= self.rate <= 1:
            raise ConfigError(
                f"--copies must be ≥ 1, --lam finite and ≥ 0, --rate in [0, 1]; got {self.copies}, "
                f"{self.lam}, {self.rate}"
            )
        if self.perturbation not in ROBUST_PERTURBATIONS:
            raise ConfigError(
                f"--perturbation {self.perturbation!r}: choose one of {', '.join(ROBUST_PERTURBATIONS)}"
            )

    def scores(self, ctx: ReaderContext, user: str, demos: list) -> np.ndarray:
        """Eq. (R1) of each of ``demos``: Effect_D's mean − λ · std over its perturbed copies."""
        from lrgd.robust.perturb import robust_score

        rng = _user_rng(ctx, user, 8)
        copies = perturbed_variants(ctx.cat, demos, self.perturbation, self.rate, self.copies, rng)
        e = effects(ctx.model, ctx.cat, validation_context(ctx, user, demos), copies, ctx.sizes,
                    rates=(self.effect_rate,))[self.effect_rate]  # fmt: skip
        return robust_score(np.asarray(e).reshape(self.copies, len(demos)), lam=self.lam)


def selection_table(
    runner,
    dataset: str,
    model_name: str = "trained:reader-anon",
    k: int = 4,
    n_users: int = 40,
    others: Sequence[str] = ("random", "recent", "similarity"),
    metric: str = "NDCG@10",
    params: dict | None = None,
):
    """Test ``metric`` of ``reader-effect`` and ``others`` at the same ``k`` and of zero-shot, on the
    runner's first ``n_users`` test users (records cached by the runner), with the paired difference
    reader-effect − method (bootstrap CI and sign-flip p). Returns a DataFrame."""
    import pandas as pd

    from lrgd.metrics import bootstrap_ci, paired_bootstrap, per_user_metrics
    from lrgd.rec.conditions import EvalConfig

    def per_user(method: str, kk: int, p=()) -> tuple[np.ndarray, dict]:
        cfg = EvalConfig(dataset, method, k=kk, n_users=n_users, model=model_name, guard="own", params=p)
        res = runner.run(cfg)
        return per_user_metrics(res["ranks"]["score"])[metric], res

    n_boot = runner.profile.eval.n_boot
    ours, _ = per_user("reader-effect", k, params or {})
    rows = {}
    for method, kk in [("reader-effect", k), *((m, k) for m in others), ("zero-shot", 0)]:
        x, res = per_user(method, kk, params or {}) if method == "reader-effect" else per_user(method, kk)
        mean, lo, hi = bootstrap_ci(x, n_boot=n_boot)
        d = (
            paired_bootstrap(ours, x, n_boot=n_boot)
            if method != "reader-effect"
            else dict.fromkeys(("diff", "lo", "hi", "p"), float("nan"))
        )
        rows[f"{method} k={kk}"] = {metric: mean, "lo": lo, "hi": hi, "reader-effect − this": d["diff"],
                                   "diff lo": d["lo"], "diff hi": d["hi"], "p": d["p"],
                                   "fallback demos": res.get("fallback_demos", 0)}  # fmt: skip
    return pd.DataFrame(rows).T

"""Effect_D: how much a demonstration moves the model toward a user's true next item.

The paper defines Effect_D as how much a demonstration speeds up the dual model's convergence toward
the user's true preference; its formula is not available to us. This is **our reconstruction**, from
the per-layer dual of chapter 1 (Eq. ``eq-layer``):

Inserting demonstration D changes every attention head's output at every later position p by the
dual model's step  Δo_D = η (o_D − o_Z),  η = Z_D / (Z_Z + Z_D)  (the *direct* change, holding that
layer's inputs fixed). To first order, the user's loss L_u (negative log-likelihood of the true
item's title after the zero-shot prompt) then changes by

    ΔL_u ≈ Σ_layers Σ_heads Σ_p ⟨Δo_D(q_{u,p}), ∂L_u/∂o_p⟩,                       (effect)

because ∂L_u/∂o_p is the *total* derivative: it carries each layer's direct change through every
later layer. Effect_D(D, u) = −ΔL_u (positive: D helps u). With ``rate="derivative"`` η becomes
Z_D/Z_Z, and the formula is exactly −dL_u/dα at α = 0 when D's attention weights are scaled by α
(tested against finite differences).

Two rates, and why they can disagree in sign. Give D's attention scores the weight α (an additive
log α). Then each head's output at a later position is o(α) = (Z_Z o_Z + α Z_D o_D) / (Z_Z + α Z_D), so

    o(α) − o_Z = η(α) (o_D − o_Z),   η(α) = α Z_D / (Z_Z + α Z_D).

The *secant* rate η(1) = Z_D / (Z_Z + Z_D) is the exact change of that layer's head output at α = 1
(the demonstration fully inserted, that layer's inputs held fixed); the *derivative* rate
η'(0) = Z_D / Z_Z is the slope at α = 0. Both are positive, so each (layer, head, position) term has the
same sign under either rate; what differs is the weighting: derivative / secant = 1 + Z_D / Z_Z. Where D
takes little attention (Z_D ≪ Z_Z) the two agree; where it takes most (Z_D ≫ Z_Z) the secant saturates
at 1 while the derivative grows without bound, so a few D-dominated heads and positions can outweigh
all others in the derivative sum and flip its sign. The derivative is the exact first-order slope
(tested), but it extrapolates that slope to α = 1 where the change has long saturated; the secant is
exact per layer and first-order only in how the layers' changes combine. A study should report both.

Ranking-aligned loss (``loss="rank"``, our reconstruction of a contrastive Effect_D). L_u above rewards
a demonstration that raises every title alike; evaluation ranks a candidate set C (the target and its
negatives). With single-token candidates c ∈ C and the answer position's logits z,

    L_u^rank = −log softmax_{c ∈ C}(z_c) at the target = −z_t + log Σ_{c ∈ C} exp z_c,      (rank)

which no common shift of the candidates' logits changes. Only ∂L_u/∂o changes; Eq. (effect), both rates
and the identity with −dL_u/dα at α = 0 hold unchanged (tested). Multi-token candidates (LLM titles)
are out of scope: a :class:`SlotPrompt` whose target or candidates are not single tokens is refused.

Cost: one forward pass per demonstration (its keys/values at its slot) plus one forward and one
backward per user, then tensor products — O(M + N) passes for M demonstrations × N users, against
M × N passes for the true gain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lrgd.errors import ConfigError, ModelError
from lrgd.llm import capture_attention
from lrgd.rec.prompts import Demonstration, build_prompt, prompt_parts

POSITIONS = ("all", "target", "end")
FORMS = ("softmax", "linear")
RATES = ("secant", "derivative")
LOSSES = ("nll", "rank")


@dataclass(frozen=True)
class SlotPrompt:
    """A user's zero-shot prompt with a reserved slot of ``slot`` positions for one demonstration.

    Layout (token ids): ``prefix`` (template start + instruction) · [slot] · ``rest`` (history,
    candidates, answer cue, template end) · ``target`` (the true item's title). A demonstration is
    placed right-aligned in the slot; without one, the slot is an empty gap in the positions, so the
    user's tokens keep the same positions in both runs.

    ``candidates`` [C] (optional): token ids of a single-token candidate set that contains the target,
    read by the ranking loss only (Eq. (rank) of the module docstring: ``loss="rank"`` in
    :func:`user_state` and :func:`loss_with_demo`).
    """

    prefix: torch.Tensor
    rest: torch.Tensor
    target: torch.Tensor
    slot: int
    candidates: torch.Tensor | None = None

    def layout(self, demo: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(ids, positions, index where ``rest`` starts) of the sequence with ``demo`` in the slot."""
        n_p, n_d = len(self.prefix), 0 if demo is None else len(demo)
        if n_d > self.slot:
            raise ModelError(f"demonstration of {n_d} tokens exceeds the slot of {self.slot}; raise slot")
        after = n_p + self.slot
        tail = torch.cat([self.rest, self.target])
        ids = [self.prefix] + ([demo] if n_d else []) + [tail]
        pos = [torch.arange(n_p)] + ([torch.arange(after - n_d, after)] if n_d else [])
        pos.append(torch.arange(after, after + len(tail)))
        return torch.cat(ids), torch.cat(pos), n_p + n_d


def _positions_index(start: int, n_rest: int, n_target: int, which: str) -> torch.Tensor:
    """Sequence indices whose attention outputs enter the Effect_D sum (see :data:`POSITIONS`)."""
    last_prompt = start + n_rest - 1
    end = start + n_rest + n_target - 1  # the last target token's output predicts nothing in L_u
    if which == "all":
        return torch.arange(start, end)
    if which == "target":
        return torch.arange(last_prompt, end)
    if which == "end":
        return torch.tensor([last_prompt])
    raise ConfigError(f"unknown positions {which!r}; choose one of {', '.join(POSITIONS)}")


def _forward_kwargs(model, ids, pos, mask=None):
    dev = next(model.parameters()).device
    kw = {"input_ids": ids[None].to(dev), "position_ids": pos[None].to(dev), "use_cache": False}
    kw["attention_mask"] = torch.ones_like(kw["input_ids"]) if mask is None else mask.to(dev)
    return kw


def target_nll(logits: torch.Tensor, ids: torch.Tensor, n_target: int) -> torch.Tensor:
    """−Σ log p(target tokens) for a [T, V] logit matrix whose sequence ends with the target."""
    logp = torch.log_softmax(logits[-n_target - 1 : -1].double(), dim=-1)
    return -logp.gather(1, ids[-n_target:, None].to(logp.device)).sum()


def target_column(sp: SlotPrompt) -> int:
    """Index of the target in ``sp.candidates``; a :class:`ModelError` when the ranking loss cannot apply."""
    if sp.candidates is None:
        raise ModelError("loss='rank' needs the SlotPrompt's candidates (token ids of the candidate set)")
    if len(sp.target) != 1:
        raise ModelError(
            f"loss='rank' needs a single-token target, got {len(sp.target)} tokens (multi-token titles are"
            " out of scope; use loss='nll')"
        )
    c = sp.candidates
    if c.ndim != 1 or len(c) < 2 or len(torch.unique(c)) != len(c):
        raise ModelError(
            f"candidates must be ≥ 2 distinct token ids, one per candidate [C]; got shape {tuple(c.shape)}"
        )
    hit = torch.nonzero(c == sp.target[0]).flatten()
    if len(hit) != 1:
        raise ModelError(f"the target token {int(sp.target[0])} is not among the candidates")
    return int(hit[0])


def candidate_logits(logits: torch.Tensor, sp: SlotPrompt) -> torch.Tensor:
    """The answer position's logits at ``sp.candidates`` [C] (float64), from the [T, V] logits of a
    sequence that ends with the (single-token) target."""
    return logits[-2, sp.candidates.to(logits.device)].double()


def rank_loss(logits: torch.Tensor, sp: SlotPrompt) -> torch.Tensor:
    """Eq. (rank): −log softmax over the candidates' logits at the answer position, taken at the target."""
    col = target_column(sp)
    return -torch.log_softmax(candidate_logits(logits, sp), dim=-1)[col]


def slot_loss(logits: torch.Tensor, ids: torch.Tensor, sp: SlotPrompt, loss: str = "nll") -> torch.Tensor:
    """L_u of ``sp`` from the [T, V] logits of its sequence ``ids`` (with or without a demonstration)."""
    if loss == "nll":
        return target_nll(logits, ids, len(sp.target))
    if loss == "rank":
        return rank_loss(logits, sp)
    raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def check_loss(sp: SlotPrompt, loss: str) -> None:
    """Fail before any model pass when ``loss`` cannot be computed for ``sp``."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    if loss == "rank":
        target_column(sp)


@dataclass
class DemoState:
    """A demonstration's per-layer keys and values at its slot: ``k[l]``, ``v[l]`` [H_kv, n, d]."""

    k: list[torch.Tensor]
    v: list[torch.Tensor]


@dataclass
class UserState:
    """One zero-shot forward + backward for a user: what Effect_D needs at the chosen positions.

    Per layer: ``q`` [H, P, d], ``out`` [H, P, d] (= Attn_Z), ``grad`` [H, P, d] (∂L_u/∂out) and
    ``log_z`` [H, P] (log Z_Z); ``scaling`` per layer; ``loss`` = L_u.
    """

    q: list[torch.Tensor]
    out: list[torch.Tensor]
    grad: list[torch.Tensor]
    log_z: list[torch.Tensor]
    scaling: list[float]
    loss: float


@torch.no_grad()
def demo_state(model, sp: SlotPrompt, demo: torch.Tensor, at_slot: bool = True) -> DemoState:
    """Keys/values of ``demo`` as the model computes them after ``sp.prefix``, at its slot (one pass).

    ``at_slot=False`` is the "no RoPE positioning" ablation: D is encoded alone at positions 0..n−1.
    """
    if at_slot:
        ids, pos, start = sp.layout(demo)
        ids, pos = ids[:start], pos[:start]
        first = len(sp.prefix)
    else:
        ids, pos, first = demo, torch.arange(len(demo)), 0
    with capture_attention(model) as layers:
        model(**_forward_kwargs(model, ids, pos))
    order = sorted(layers)
    return DemoState([layers[i].k[:, first:] for i in order], [layers[i].v[:, first:] for i in order])


def user_state(
    model, sp: SlotPrompt, positions: str = "all", dtype=torch.float64, loss: str = "nll"
) -> UserState:
    """Zero-shot forward and backward of L_u for ``sp`` (one forward + one backward pass).

    ``loss``: ``"nll"`` (the target title's negative log-likelihood) or ``"rank"`` (Eq. (rank) over
    ``sp.candidates``); only the gradient ∂L_u/∂o and ``UserState.loss`` depend on it.
    """
    check_loss(sp, loss)
    ids, pos, start = sp.layout(None)
    index = _positions_index(start, len(sp.rest), len(sp.target), positions)
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        kw = _forward_kwargs(model, ids, pos)
        embeds = model.get_input_embeddings()(kw.pop("input_ids")).detach().requires_grad_(True)
        with torch.enable_grad(), capture_attention(model, keep_graph=True) as layers:
            logits = model(inputs_embeds=embeds, **kw).logits[0]
            value = slot_loss(logits, ids, sp, loss)
            value.backward()
    finally:
        for p, f in zip(model.parameters(), flags):
            p.requires_grad_(f)
    qs, outs, grads, log_zs, scal = [], [], [], [], []
    for li in sorted(layers):
        cap = layers[li]
        h = cap.q.shape[0]
        g = h // cap.k.shape[0]
        q = cap.q[:, index].to(dtype)  # [H, P, d]
        k = cap.k.to(dtype).repeat_interleave(g, dim=0)  # [H, T, d] (small: one user)
        s = torch.einsum("hpd,htd->hpt", q, k) * cap.scaling
        causal = torch.arange(k.shape[1])[None, :] <= index[:, None]
        if cap.sliding_window is not None:
            causal &= torch.arange(k.shape[1])[None, :] > index[:, None] - cap.sliding_window
        log_zs.append(torch.logsumexp(s.masked_fill(~causal, -math.inf), dim=-1))
        qs.append(q)
        outs.append(cap.out[index].transpose(0, 1).to(dtype))
        grads.append(cap.live_out.grad[0, index].transpose(0, 1).to(dtype))
        scal.append(cap.scaling)
    return UserState(qs, outs, grads, log_zs, scal, float(value.detach()))


def effect_d(
    ds: DemoState,
    us: UserState,
    form: str = "softmax",
    rate: str = "secant",
    layers: list[int] | None = None,
) -> float:
    """Effect_D(D, u) = −Σ_l Σ_h Σ_p ⟨Δo_D, ∂L_u/∂o⟩, Eq. (effect) of the module docstring.

    ``form="linear"``: Δo = ΔW_ICL q (the softmax-free dual, an ablation); ``rate``: η = Z_D/Z
    (``secant``) or Z_D/Z_Z (``derivative``); ``layers``: restrict the sum (e.g. early layers only).
    """
    if form not in FORMS:
        raise ConfigError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if rate not in RATES:
        raise ConfigError(f"unknown rate {rate!r}; choose one of {', '.join(RATES)}")
    total = 0.0
    for li in range(len(us.q)) if layers is None else layers:
        q, grad = us.q[li], us.grad[li]
        h, p, d = q.shape
        kd, vd = ds.k[li].to(q.dtype), ds.v[li].to(q.dtype)
        n_kv = kd.shape[0]
        qg = q.reshape(n_kv, h // n_kv, p, d)
        s = torch.matmul(qg, kd[:, None].transpose(-1, -2)) * us.scaling[li]  # [H_kv, g, P, n]
        if form == "linear":
            delta = torch.matmul(s, vd[:, None])  # Σ_i v_i (k_iᵀ q) · scaling
        else:
            log_zd = torch.logsumexp(s, dim=-1)
            o_d = torch.matmul(torch.softmax(s, dim=-1), vd[:, None])
            lz = us.log_z[li].reshape(n_kv, h // n_kv, p)
            eta = torch.sigmoid(log_zd - lz) if rate == "secant" else torch.exp(log_zd - lz)
            delta = eta[..., None] * (o_d - us.out[li].reshape(n_kv, h // n_kv, p, d))
        total -= float((delta.reshape(h, p, d) * grad).sum())
    return total


@torch.no_grad()
def loss_with_demo(
    model, sp: SlotPrompt, demo: torch.Tensor | None, alpha: float = 1.0, loss: str = "nll"
) -> float:
    """L_u with ``demo`` in the slot (one forward pass): the true gain is L_u(None) − L_u(demo).

    ``alpha`` scales the attention weights that every later token gives to the demonstration
    (an additive log α on those scores); α = 0 hides it, α = 1 is the plain prompt. ``loss`` as in
    :func:`user_state`.
    """
    check_loss(sp, loss)
    ids, logits = logits_with_demo(model, sp, demo, alpha)
    return float(slot_loss(logits, ids, sp, loss))


@torch.no_grad()
def logits_with_demo(
    model, sp: SlotPrompt, demo: torch.Tensor | None, alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [T], logits [T, V]) of ``sp`` with ``demo`` in the slot and D's attention weights scaled by
    ``alpha`` (see :func:`loss_with_demo`): one forward pass."""
    ids, pos, start = sp.layout(demo)
    mask = None
    if demo is not None and alpha != 1.0:
        dtype = next(model.parameters()).dtype
        t = len(ids)
        m = torch.full((t, t), -math.inf, dtype=dtype).triu(1)
        m[start:, start - len(demo) : start] += math.log(alpha) if alpha > 0 else -math.inf
        mask = m[None, None]
    return ids, model(**_forward_kwargs(model, ids, pos, mask)).logits[0]


def slot_prompt(
    tokenizer,
    parts: list[tuple[str, str]],
    target_title: str,
    chat: bool,
    slot: int,
    candidate_titles: list[str] | None = None,
) -> SlotPrompt:
    """The zero-shot prompt of ``parts`` (from :func:`lrgd.rec.prompts.prompt_parts`, no demonstrations)
    with an empty slot right after the instruction, and the target title's tokens.

    The prompt is tokenised jointly by :func:`lrgd.rec.prompts.build_prompt` and cut where the first part
    after the instruction starts, so ``prefix · demo_tokens(D) · rest`` is exactly the token sequence that
    ``build_prompt`` gives the same prompt with the one demonstration D (tested). Tokenising the pieces
    separately would not be: SmolLM2's tokenizer merges a piece's trailing blank line into one token.

    ``candidate_titles`` (target included) become ``SlotPrompt.candidates`` for the ranking loss; each
    must tokenise (as the target does) to exactly one token, else a :class:`ModelError` names it.
    """
    names = [n for n, _ in parts]
    if len(names) < 2 or names[0] != "instruction" or any(n.startswith("demo") for n in names):
        raise ModelError("slot_prompt needs zero-shot parts that start with the instruction")
    prompt = build_prompt(tokenizer, parts, chat)
    cut = prompt.spans[names[1]][0]
    target = _title_tokens(tokenizer, target_title, chat)
    if not target:
        raise ModelError(f"target title {target_title!r} tokenises to nothing")
    cands = None
    if candidate_titles is not None:
        ids = [_title_tokens(tokenizer, t, chat) for t in candidate_titles]
        bad = next((t for t, x in zip(candidate_titles, ids) if len(x) != 1), None)
        if bad is not None:
            raise ModelError(
                f"candidate {bad!r} is not a single token (multi-token candidates are out of scope for rank)"
            )
        cands = torch.tensor([x[0] for x in ids])
    return SlotPrompt(prompt.input_ids[:cut], prompt.input_ids[cut:], torch.tensor(target), slot, cands)


def _title_tokens(tokenizer, title: str, chat: bool) -> list[int]:
    """A title's token ids as it follows the answer cue (a leading space outside the chat template)."""
    return tokenizer(title if chat else " " + title, add_special_tokens=False)["input_ids"]


def demo_tokens(tokenizer, history: tuple[str, ...] | list[str], next_item: str) -> torch.Tensor:
    """Token ids of one demonstration as it sits in the slot: the ``demo0`` span of
    :func:`lrgd.rec.prompts.build_prompt` (the template of :func:`lrgd.rec.prompts.prompt_parts`, tokenised
    between the instruction and the user's history as in every prompt)."""
    parts = prompt_parts([next_item], [Demonstration(tuple(history), next_item)])
    prompt = build_prompt(tokenizer, parts, chat=False)
    a, b = prompt.spans["demo0"]
    return prompt.input_ids[a:b]


def demo_states(
    model, users: list[SlotPrompt], demos: list[torch.Tensor], at_slot: bool = True
) -> list[DemoState]:
    """One pass per demonstration, after the users' shared prefix (see :func:`demo_state`)."""
    from lrgd.progress import progress

    for u in users[1:]:
        if not torch.equal(u.prefix, users[0].prefix) or u.slot != users[0].slot:
            raise ModelError("all users must share the prefix and the slot to reuse demonstration states")
    return [demo_state(model, users[0], d, at_slot=at_slot) for d in progress(demos, "demonstration states")]


def user_states(model, users: list[SlotPrompt], positions: str = "all", loss: str = "nll") -> list[UserState]:
    """One forward and one backward pass per user (see :func:`user_state`)."""
    from lrgd.progress import progress

    return [user_state(model, u, positions, loss=loss) for u in progress(users, "user states (fwd+bwd)")]


def _stack_demos(
    d_states: list[DemoState], layer: int, dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys, values [M, H_kv, n_max, d] of all demonstrations at ``layer`` (zero-padded); mask [M, n_max]."""
    n_max = max(d.k[layer].shape[1] for d in d_states)
    k0 = d_states[0].k[layer]
    keys = torch.zeros(len(d_states), k0.shape[0], n_max, k0.shape[2], dtype=dtype)
    vals = torch.zeros(len(d_states), k0.shape[0], n_max, d_states[0].v[layer].shape[2], dtype=dtype)
    mask = torch.zeros(len(d_states), n_max, dtype=torch.bool)
    for i, d in enumerate(d_states):
        n = d.k[layer].shape[1]
        keys[i, :, :n], vals[i, :, :n], mask[i, :n] = d.k[layer], d.v[layer], True
    return keys, vals, mask


def effect_matrix(
    d_states: list[DemoState],
    u_states: list[UserState],
    form: str = "softmax",
    rate: str = "secant",
    layers: list[int] | None = None,
) -> torch.Tensor:
    """Effect_D for every (demonstration, user) pair, [M, N]: tensor products only, no LLM pass.

    The same quantity as :func:`effect_d`, batched over all demonstrations (padded to one length).
    With :func:`demo_states` and :func:`user_states` the whole matrix costs M + 2N passes.
    """
    if form not in FORMS:
        raise ConfigError(f"unknown form {form!r}; choose one of {', '.join(FORMS)}")
    if rate not in RATES:
        raise ConfigError(f"unknown rate {rate!r}; choose one of {', '.join(RATES)}")
    dtype = u_states[0].q[0].dtype
    out = torch.zeros(len(d_states), len(u_states), dtype=dtype)
    for li in range(len(u_states[0].q)) if layers is None else layers:
        keys, vals, mask = _stack_demos(d_states, li, dtype)  # [M, H_kv, n, d]
        n_kv = keys.shape[1]
        pad = (~mask)[:, None, None, None, :]  # broadcast to [M, H_kv, g, P, n]
        for j, us in enumerate(u_states):
            h, p, d = us.q[li].shape
            g = h // n_kv
            qg = us.q[li].reshape(n_kv, g, p, d)
            grad = us.grad[li].reshape(n_kv, g, p, d)
            s = torch.einsum("hgpd,mhnd->mhgpn", qg, keys) * us.scaling[li]
            vg = torch.einsum("mhnd,hgpd->mhgpn", vals, grad)  # ⟨v_i, ∂L/∂o⟩ per demo token
            if form == "linear":
                out[:, j] -= (s * vg).masked_fill(pad, 0.0).sum(dim=(1, 2, 3, 4))
                continue
            s = s.masked_fill(pad, -math.inf)
            log_zd = torch.logsumexp(s, dim=-1)  # [M, H_kv, g, P]
            a = (torch.softmax(s, dim=-1) * vg).sum(-1)  # ⟨Attn_D, ∂L/∂o⟩
            b = (us.out[li] * us.grad[li]).sum(-1).reshape(n_kv, g, p)  # ⟨Attn_Z, ∂L/∂o⟩
            lz = us.log_z[li].reshape(n_kv, g, p)
            eta = torch.sigmoid(log_zd - lz) if rate == "secant" else torch.exp(log_zd - lz)
            out[:, j] -= (eta * (a - b)).sum(dim=(1, 2, 3))
    return out


def true_gain_matrix(
    model, users: list[SlotPrompt], demos: list[torch.Tensor], loss: str = "nll"
) -> torch.Tensor:
    """L_u(zero-shot) − L_u(with D) for every pair: [M, N], with N + M·N forward passes."""
    from lrgd.progress import progress

    base = [loss_with_demo(model, u, None, loss=loss) for u in users]
    rows = []
    for d in progress(demos, "true gains (one pass per pair)"):
        rows.append([base[j] - loss_with_demo(model, u, d, loss=loss) for j, u in enumerate(users)])
    return torch.tensor(rows)

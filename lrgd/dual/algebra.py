"""The dual model: attention over a context Z ∪ D read as gradient descent on the demonstrations D.

Notation (one attention head, query ``q`` ∈ R^d, keys ``k_n`` ∈ R^d, values ``v_n`` ∈ R^{d_v}):
Z = the zero-shot part of the context (instruction X_T, user history, candidates), D = the
demonstrations X_D. Equation numbers refer to chapter 1 (``notebooks/01_equivalence.py``).
Eqs. (1)–(3) follow Dai et al. (2023) and von Oswald et al. (2023); the softmax split (6), the
random-feature dual (8) and the per-layer reading (9) are this book's own derivations, because only
the abstract and notation of the LRGD paper are available to us.

Shapes in docstrings: ``q`` [d] or [H, d]; ``k``/``v`` [N, d]; a boolean ``demo`` [N] marks D.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# --------------------------------------------------------------------------- (1)–(3) linear attention


def outer_sum(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Σ_n v_n k_nᵀ — the weight matrix a set of (key, value) pairs writes. [N,d],[N,dv] → [dv,d]."""
    return v.transpose(-1, -2) @ k


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax-free attention, Eq. (1): LA(q) = Σ_n v_n (k_nᵀ q). [d],[N,d],[N,dv] → [dv]."""
    return v.transpose(-1, -2) @ (k @ q)


@dataclass
class LinearDual:
    """Eq. (2): LA(q) = (W_ZSL + ΔW_ICL) q."""

    w_zsl: torch.Tensor  # [dv, d]  Σ_{n∈Z} v_n k_nᵀ
    delta_w_icl: torch.Tensor  # [dv, d]  Σ_{i∈D} v_i k_iᵀ

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return (self.w_zsl + self.delta_w_icl) @ q


def linear_dual(k: torch.Tensor, v: torch.Tensor, demo: torch.Tensor) -> LinearDual:
    """Split Σ_n v_n k_nᵀ into its zero-shot and demonstration parts, Eq. (2)."""
    return LinearDual(outer_sum(k[~demo], v[~demo]), outer_sum(k[demo], v[demo]))


def dual_loss(w: torch.Tensor, k_demo: torch.Tensor, v_demo: torch.Tensor) -> torch.Tensor:
    """The demonstration loss of the dual model, Eq. (3): L(W) = −Σ_{i∈D} v_iᵀ W k_i.

    Each demonstration token is a training pair (input k_i, target signal v_i); the loss
    rewards the linear model for mapping k_i in the direction v_i.
    """
    return -(v_demo * (k_demo @ w.transpose(-1, -2))).sum()


def gd_step(w0: torch.Tensor, k_demo: torch.Tensor, v_demo: torch.Tensor, lr: float = 1.0) -> torch.Tensor:
    """One gradient-descent step on :func:`dual_loss`, taken with ``torch.autograd``.

    W_1 = W_0 − η ∇_W L(W_0); with η = 1 this equals W_0 + ΔW_ICL (Eq. 4).
    """
    w = w0.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dual_loss(w, k_demo, v_demo), w)
    return (w - lr * grad).detach()


# --------------------------------------------------------------------------- (5) RoPE


def rope_angles(
    positions: torch.Tensor, dim: int, base: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of RoPE (Su et al. 2021) in the Llama/HF "rotate-half" layout. → [T, dim] each."""
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64)[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def rope(x: torch.Tensor, positions: torch.Tensor, base: float = 10000.0) -> torch.Tensor:
    """Rotate each row x_t by R_{p_t}, Eq. (5). [T, d] → [T, d]; (R_m k)ᵀ(R_n q) = kᵀ R_{n−m} q."""
    cos, sin = rope_angles(positions, x.shape[-1], base)
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


# --------------------------------------------------------------------------- (6) softmax split


@dataclass
class SoftmaxSplit:
    """Eq. (6): Attn(q) = (Z_Z/Z)·Attn_Z(q) + (Z_D/Z)·Attn_D(q) = Attn_Z + η (Attn_D − Attn_Z).

    ``share`` is η = Z_D/Z, the data-dependent learning rate of the demonstration step.
    Leading dimensions (e.g. heads) are kept. ``log_z_*`` are log partition sums.
    """

    out: torch.Tensor  # [..., dv] full attention output
    out_z: torch.Tensor  # [..., dv] attention restricted to Z
    out_d: torch.Tensor  # [..., dv] attention restricted to D
    log_z_z: torch.Tensor  # [...]
    log_z_d: torch.Tensor  # [...]

    @property
    def share(self) -> torch.Tensor:
        """η = Z_D / (Z_Z + Z_D)."""
        return torch.sigmoid(self.log_z_d - self.log_z_z)

    @property
    def update(self) -> torch.Tensor:
        """The demonstrations' step on the zero-shot output: η (Attn_D − Attn_Z)."""
        return self.share[..., None] * (self.out_d - self.out_z)

    def combined(self) -> torch.Tensor:
        """Eq. (6) rebuilt from its parts (equals ``out``)."""
        eta = self.share[..., None]
        return (1 - eta) * self.out_z + eta * self.out_d


def _masked_softmax_parts(scores: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
    """log Σ_{n∈mask} e^{s_n} and the attention output restricted to ``mask``.

    ``scores`` [..., N], ``v`` [..., N, dv] (broadcast), ``mask`` [..., N] bool. An empty part gives
    log-sum −inf and output 0.
    """
    s = scores.masked_fill(~mask, -math.inf)
    log_z = torch.logsumexp(s, dim=-1)
    w = torch.exp(s - torch.where(torch.isfinite(log_z), log_z, 0.0)[..., None])
    return log_z, (w[..., None] * v).sum(-2)


def softmax_split(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, demo: torch.Tensor, scaling: float | None = None
) -> SoftmaxSplit:
    """Softmax attention of ``q`` over all keys, split into Z (``~demo``) and D (``demo``), Eq. (6).

    ``q`` [..., d]; ``k``, ``v`` [N, d] or broadcastable [..., N, d]; ``demo`` [N] bool.
    """
    scale = q.shape[-1] ** -0.5 if scaling is None else scaling
    scores = (k @ q[..., None])[..., 0] * scale  # [..., N]
    log_z_z, out_z = _masked_softmax_parts(scores, v, ~demo)
    log_z_d, out_d = _masked_softmax_parts(scores, v, demo)
    out = torch.softmax(scores, dim=-1)[..., None].mul(v).sum(-2)
    return SoftmaxSplit(out, out_z, out_d, log_z_z, log_z_d)


# --------------------------------------------------------------------------- (7)–(8) kernel route


def draw_features(m: int, d: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """m i.i.d. Gaussian projection rows w_j ~ N(0, I_d) for :func:`positive_features`. → [m, d]."""
    return torch.randn(m, d, generator=generator, dtype=dtype)


def positive_features(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Performer's positive random features, Eq. (7): φ(x) = exp(Wx − ‖x‖²/2)/√m.

    E[φ(k)ᵀφ(q)] = exp(kᵀq), so exp(kᵀq/√d) ≈ φ(k/d^{1/4})ᵀ φ(q/d^{1/4}). [..., d] → [..., m].
    """
    m = w.shape[0]
    return torch.exp(x @ w.T - 0.5 * (x * x).sum(-1, keepdim=True)) / math.sqrt(m)


@dataclass
class KernelDual:
    """Eq. (8): Attn(q) ≈ (W^φ_Z + ΔW^φ) φ(q) / ((z_Z + z_D)ᵀ φ(q)), a linear dual in feature space."""

    w_zsl: torch.Tensor  # [dv, m]  Σ_{n∈Z} v_n φ(k_n)ᵀ
    delta_w: torch.Tensor  # [dv, m]  Σ_{i∈D} v_i φ(k_i)ᵀ
    z_zsl: torch.Tensor  # [m]      Σ_{n∈Z} φ(k_n)
    z_demo: torch.Tensor  # [m]      Σ_{i∈D} φ(k_i)

    def __call__(self, phi_q: torch.Tensor) -> torch.Tensor:
        num = (self.w_zsl + self.delta_w) @ phi_q
        return num / ((self.z_zsl + self.z_demo) @ phi_q)


def kernel_dual(
    k: torch.Tensor, v: torch.Tensor, demo: torch.Tensor, w: torch.Tensor, scaling: float | None = None
) -> KernelDual:
    """Build :class:`KernelDual` from keys/values; keys are pre-scaled so φ approximates exp(s·kᵀq)."""
    s = k.shape[-1] ** -0.5 if scaling is None else scaling
    phi = positive_features(k * math.sqrt(s), w)
    return KernelDual(
        outer_sum(phi[~demo], v[~demo]), outer_sum(phi[demo], v[demo]), phi[~demo].sum(0), phi[demo].sum(0)
    )


def query_features(q: torch.Tensor, w: torch.Tensor, scaling: float | None = None) -> torch.Tensor:
    """φ(q) with the same pre-scaling as :func:`kernel_dual`."""
    s = q.shape[-1] ** -0.5 if scaling is None else scaling
    return positive_features(q * math.sqrt(s), w)


# --------------------------------------------------------------------------- (9) per head, per layer


def heads_split(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    demo: torch.Tensor,
    scaling: float,
    window: int | None = None,
) -> SoftmaxSplit:
    """Eq. (6) for every query head at one position, grouped by KV head (no expanded copies).

    ``q`` [H, d] the queries at the position; ``k``, ``v`` [H_kv, T, d] the keys/values visible to
    it (causal prefix, T ≤ position + 1); ``demo`` [T]. Query head h reads KV head h // (H/H_kv).
    Returns a split with leading dimension H.
    """
    n_heads, d = q.shape
    n_kv, t, _ = k.shape
    qg = q.reshape(n_kv, n_heads // n_kv, d)
    scores = torch.matmul(qg, k.transpose(-1, -2)) * scaling  # [H_kv, g, T]
    if window is not None and t > window:
        scores[..., : t - window] = -math.inf
    top = scores.amax(-1, keepdim=True)
    e = torch.exp(scores - top)  # shifted weights; the shift cancels in every ratio
    e_d = e * demo.to(e.dtype)
    e_z = e - e_d
    z_z, z_d = e_z.sum(-1), e_d.sum(-1)
    tiny = torch.finfo(e.dtype).tiny  # an empty part gives output 0 (not 0/0)
    out_z = torch.matmul(e_z, v) / z_z.clamp_min(tiny)[..., None]  # v [H_kv, T, dv] is shared by g heads
    out_d = torch.matmul(e_d, v) / z_d.clamp_min(tiny)[..., None]
    log_z_z, log_z_d = z_z.log() + top[..., 0], z_d.log() + top[..., 0]
    eta = (z_d / (z_z + z_d))[..., None]
    out = (1 - eta) * out_z + eta * out_d
    parts = (out, out_z, out_d, log_z_z, log_z_d)
    return SoftmaxSplit(*(x.reshape(n_heads, *x.shape[2:]) for x in parts))


def heads_linear_update(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, demo: torch.Tensor
) -> torch.Tensor:
    """The softmax-free demonstration term ΔW_ICL q = Σ_{i∈D} v_i (k_iᵀ q) for every head. → [H, dv]."""
    n_heads, d = q.shape
    n_kv = k.shape[0]
    qg = q.reshape(n_kv, n_heads // n_kv, d)
    kd, vd = k[:, demo], v[:, demo]
    return torch.einsum("hgd,htd,hte->hge", qg, kd, vd).reshape(n_heads, -1)


def relative_error(a: torch.Tensor, b: torch.Tensor, dim: int | None = -1) -> torch.Tensor:
    """‖a − b‖ / ‖b‖ along ``dim`` (b is the reference); ``dim=None`` uses the whole tensor."""
    if dim is None:
        a, b, dim = a.reshape(-1), b.reshape(-1), -1
    return (a - b).norm(dim=dim) / b.norm(dim=dim).clamp_min(torch.finfo(b.dtype).tiny)


def cosine(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Cosine similarity along ``dim``."""
    return torch.nn.functional.cosine_similarity(a, b, dim=dim, eps=1e-30)

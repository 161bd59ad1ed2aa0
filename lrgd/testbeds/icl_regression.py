"""Testbed A: linear regression in context, the anchor of von Oswald et al. (2023).

A task is a weight vector ``w`` ~ N(0, I_d); its context holds ``N`` tokens ``e_i = (x_i, y_i)`` with
``x_i`` ~ U(−1, 1)^d and ``y_i = wᵀx_i`` (+ noise), followed by a query token ``e_q = (x_q, 0)``.

*Linear self-attention* (LSA), one layer, as in von Oswald et al. (2023), Eq. (A1):

    e_j ← e_j + (1/N) Σ_{i ≤ N} W_PV e_i · (W_K e_i)ᵀ (W_Q e_j)                         (A1)

for every token ``j`` (context and query; only context tokens are keys), stacked ``L`` times; the
prediction is read from the query's ``y`` slot with a minus sign, ``ŷ = −(e_q)_y``.

*Gradient descent* on the dual linear model ``f_W(x) = Wx`` with ``L(W) = 1/(2N) Σ_i (Wx_i − y_i)²``
from ``W_0 = 0``, Eq. (A2):

    W_{t+1} = W_t + (η/N) Σ_i (y_i − W_t x_i) x_iᵀ.                                   (A2)

With ``W_Q = W_K = [I_d 0]`` and ``W_PV = −η e_y e_yᵀ`` the ``y`` slot of every token carries the
residual ``y_j − W_t x_j`` (context) or ``−W_t x_q`` (query), so ``L`` layers of (A1) equal ``L`` steps of
(A2) exactly (von Oswald et al. 2023, Prop. 1 and its multi-layer reading). With RoPE on keys and
queries (Su et al. 2021) the same weights equal ``L`` GD steps on *position-rotated* inputs
``φ_i = R_{p_i} x̃_i``, Eq. (A3) — our reconstruction of the RoPE dual of chapter 1, Eq. (eq-rope).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from lrgd.config import RegressionSizes, cache_dir
from lrgd.dual.algebra import cosine, relative_error, rope
from lrgd.errors import ConfigError, ModelError
from lrgd.progress import progress
from lrgd.results import code_hash, content_key, save_torch

#: the modules whose source shapes the trained LSA weights (the model, its training loop and the task
#: sampler; RoPE): their :func:`~lrgd.results.code_hash` is part of the weight-cache key
TRAINING_MODULES = ("lrgd.testbeds.icl_regression", "lrgd.dual.algebra")


# ----------------------------------------------------------------------------- tasks


@dataclass
class Tasks:
    """A batch of regression tasks. ``x`` [B, N, d], ``y`` [B, N], ``xq`` [B, d], ``yq`` [B], ``w`` [B, d]."""

    x: torch.Tensor
    y: torch.Tensor
    xq: torch.Tensor
    yq: torch.Tensor
    w: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]


def sample_tasks(
    n_tasks: int,
    n_ctx: int,
    dim: int,
    generator: torch.Generator,
    noise: float = 0.0,
    dtype: torch.dtype = torch.float32,
) -> Tasks:
    """Draw ``n_tasks`` tasks: w ~ N(0, I), x ~ U(−1, 1)^d, y = wᵀx + noise · N(0, 1)."""
    w = torch.randn(n_tasks, dim, generator=generator, dtype=torch.float64)
    x = torch.rand(n_tasks, n_ctx + 1, dim, generator=generator, dtype=torch.float64) * 2 - 1
    y = (x @ w[:, :, None])[..., 0]
    if noise:
        y = y + noise * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    x, y, w = x.to(dtype), y.to(dtype), w.to(dtype)
    return Tasks(x[:, :-1], y[:, :-1], x[:, -1], y[:, -1], w)


def tokens(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Context tokens (x_i, y_i) and the query token (x_q, 0): [B, N + 1, d + 1]."""
    ctx = torch.cat([x, y[..., None]], -1)
    q = torch.cat([xq, torch.zeros_like(xq[:, :1])], -1)[:, None]
    return torch.cat([ctx, q], 1)


# ----------------------------------------------------------------------------- gradient descent (A2)


def gd_weights(x: torch.Tensor, y: torch.Tensor, lr: float, steps: int = 1) -> torch.Tensor:
    """``steps`` GD steps of Eq. (A2) from W = 0, batched: [B, N, d], [B, N] → W [B, d]."""
    w = torch.zeros_like(x[:, 0])
    n = x.shape[1]
    for _ in range(steps):
        resid = y - (x @ w[:, :, None])[..., 0]
        w = w + lr / n * (resid[..., None] * x).sum(1)
    return w


def gd_predict(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor, lr: float, steps: int = 1) -> torch.Tensor:
    """ŷ = W_steps x_q with W from :func:`gd_weights`: [B]."""
    return (gd_weights(x, y, lr, steps) * xq).sum(-1)


def least_squares_predict(x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """The minimum-norm least-squares prediction (the optimum for noise-free tasks): [B]."""
    w = torch.linalg.pinv(x.double()) @ y.double()[..., None]
    return (w[..., 0] * xq.double()).sum(-1).to(x.dtype)


def tune_gd_lr(tasks: Tasks, steps: int, bounds: tuple[float, float] = (1e-3, 4.0)) -> float:
    """The learning rate η minimising the GD test loss on ``tasks`` (bounded scalar search)."""
    from scipy.optimize import minimize_scalar

    def loss(lr: float) -> float:
        return float(((gd_predict(tasks.x, tasks.y, tasks.xq, lr, steps) - tasks.yq) ** 2).mean())

    return float(minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-5}).x)


# ----------------------------------------------------------------------------- linear self-attention (A1)


class LinearSelfAttention(torch.nn.Module):
    """``depth`` layers of Eq. (A1); ``use_rope`` rotates keys and queries by their token positions."""

    def __init__(
        self, dim: int, depth: int = 1, key_dim: int | None = None, use_rope: bool = False, init=0.05
    ):
        super().__init__()
        width = dim + 1
        key_dim = key_dim or width + width % 2
        if use_rope and key_dim % 2:
            raise ConfigError(f"key_dim={key_dim} must be even for RoPE")
        self.dim, self.depth, self.key_dim, self.use_rope = dim, depth, key_dim, use_rope
        # Initialisation (our choice): keys and queries start blind to y, values blind to x. All entries
        # are trained. From a fully random start 2 of 8 seeds fell into a rank-one local optimum
        # (value reads x, key reads y) that a GD-like layer cannot leave within our budgets.
        self.w_q = torch.nn.Parameter(
            init * torch.randn(depth, key_dim, width) * self._mask(width, x_only=True)
        )
        self.w_k = torch.nn.Parameter(
            init * torch.randn(depth, key_dim, width) * self._mask(width, x_only=True)
        )
        self.w_pv = torch.nn.Parameter(
            init * torch.randn(depth, width, width) * self._mask(width, x_only=False)
        )

    @staticmethod
    def _mask(width: int, x_only: bool) -> torch.Tensor:
        """Column mask over a token (x_1..x_d, y): keep the x columns (``x_only``) or only the y column."""
        m = torch.zeros(width)
        if x_only:
            m[:-1] = 1.0
        else:
            m[-1] = 1.0
        return m

    def forward(self, x: torch.Tensor, y: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
        """ŷ = −(e_q)_y after ``depth`` layers: [B]."""
        e = tokens(x, y, xq).to(self.w_q.dtype)
        n = x.shape[1]
        pos = torch.arange(n + 1)
        for layer in range(self.depth):
            q = e @ self.w_q[layer].T  # [B, N+1, dk] every token queries
            k = e[:, :n] @ self.w_k[layer].T  # [B, N, dk] context tokens are the keys
            v = e[:, :n] @ self.w_pv[layer].T  # [B, N, d+1]
            if self.use_rope:
                q, k = rope(q, pos), rope(k, pos[:n])
            e = e + (q @ k.transpose(1, 2)) @ v / n
        return -e[:, -1, -1]


def constructed_lsa(
    dim: int, depth: int, lr: float, key_dim: int | None = None, use_rope: bool = False, dtype=torch.float64
) -> LinearSelfAttention:
    """von Oswald et al.'s weights: W_Q = W_K = [I_d 0], W_PV = −η e_y e_yᵀ (every layer one GD step)."""
    model = LinearSelfAttention(dim, depth, key_dim, use_rope, init=0.0).to(dtype)
    with torch.no_grad():
        eye = torch.eye(dim, dtype=dtype)
        model.w_q[:, :dim, :dim] = eye
        model.w_k[:, :dim, :dim] = eye
        model.w_pv[:, dim, dim] = -lr
    return model


def rotated_inputs(x: torch.Tensor, xq: torch.Tensor, key_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. (A3): the padded inputs x̃ = (x, 0…) rotated by their token positions (context 0..N−1, query N)."""
    n = x.shape[1]
    pad = key_dim - x.shape[-1]
    xt = torch.nn.functional.pad(x, (0, pad))
    qt = torch.nn.functional.pad(xq, (0, pad))[:, None]
    return rope(xt, torch.arange(n)), rope(qt, torch.tensor([n]))[:, 0]


def sensitivity(predict, tasks: Tasks) -> torch.Tensor:
    """∂ŷ/∂x_q for every task, by autograd: [B, d] (``predict(x, y, xq) → ŷ``)."""
    xq = tasks.xq.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(predict(tasks.x, tasks.y, xq).sum(), xq)
    return grad


# ----------------------------------------------------------------------------- chapter 1b's measurements


def mse(pred: torch.Tensor, y: torch.Tensor) -> float:
    """Mean squared error of predictions [B] against targets [B]."""
    return float(((pred - y) ** 2).mean())


def construction_errors(
    preset: RegressionSizes, gen: torch.Generator, lr: float = 0.7, depths=(1, 2, 3), n_tasks: int = 500
) -> dict[str, list[float]]:
    """Per depth L, on ``n_tasks`` float64 tasks: relative error of von Oswald et al.'s constructed LSA
    against L GD steps (``plain``), of the same weights with RoPE against L GD steps on rotated inputs,
    Eq. (A3) (``rope``) — both identities — and how far the RoPE model is from plain GD
    (``rope_vs_plain``)."""

    def _rel_all(a: torch.Tensor, b: torch.Tensor) -> float:
        return relative_error(a, b, dim=None).item()

    t = sample_tasks(n_tasks, preset.n_ctx, preset.dim, gen, dtype=torch.float64)
    out = {"plain": [], "rope": [], "rope_vs_plain": []}
    for depth in depths:
        ref = gd_predict(t.x, t.y, t.xq, lr, depth)
        plain = constructed_lsa(preset.dim, depth, lr)(t.x, t.y, t.xq)
        out["plain"].append(_rel_all(plain, ref))
        fx, fq = rotated_inputs(t.x, t.xq, preset.key_dim)
        pred_r = constructed_lsa(preset.dim, depth, lr, key_dim=preset.key_dim, use_rope=True)(t.x, t.y, t.xq)
        out["rope"].append(_rel_all(pred_r, gd_predict(fx, t.y, fq, lr, depth)))
        out["rope_vs_plain"].append(_rel_all(pred_r, ref))
    return out


def compare_with_gd(model: LinearSelfAttention, depth: int, tasks: Tasks, lr: float) -> dict[str, float]:
    """von Oswald et al.'s comparison of a trained LSA with ``depth`` GD steps of size ``lr`` on ``tasks``:
    both losses, the RMS difference of their predictions, the mean cosine and mean relative difference of
    their sensitivities ∂ŷ/∂x_q."""
    gd = lambda x, y, xq: gd_predict(x, y, xq, lr, depth)  # noqa: E731
    with torch.no_grad():
        p_lsa, p_gd = model(tasks.x, tasks.y, tasks.xq), gd(tasks.x, tasks.y, tasks.xq)
    s_lsa, s_gd = sensitivity(model, tasks), sensitivity(gd, tasks)
    return {
        "loss LSA": mse(p_lsa, tasks.yq),
        "loss GD (L steps)": mse(p_gd, tasks.yq),
        "GD η": lr,
        "pred. diff ‖ŷ_LSA − ŷ_GD‖ (RMS)": float(((p_lsa - p_gd) ** 2).mean().sqrt()),
        "cos(∂ŷ/∂x_q)": float(cosine(s_lsa, s_gd).mean()),
        "sens. diff (rel.)": float(relative_error(s_lsa, s_gd).mean()),
    }


def loss_vs_context(
    models: dict, preset: RegressionSizes, gd_lr: dict[int, float], gen: torch.Generator
) -> dict[str, list[float]]:
    """Test squared error at each context size N in ``preset.eval_ns`` (fresh tasks per N) of: predicting
    0, least squares, GD with the tuned ``gd_lr[depth]``, every trained model in ``models`` (``LSA <name>``)
    and von Oswald's one-step weights with RoPE added. Returns column → values (one per N)."""
    cols = {k: [] for k in ("zero", "least squares", *[f"GD {d}" for d in gd_lr])}
    cols.update({f"LSA {k}": [] for k in models})
    cols["constructed GD weights + RoPE"] = []
    for n in preset.eval_ns:
        t = sample_tasks(preset.eval_tasks, n, preset.dim, gen)
        cols["zero"].append(mse(torch.zeros_like(t.yq), t.yq))
        cols["least squares"].append(mse(least_squares_predict(t.x, t.y, t.xq), t.yq))
        for d, lr in gd_lr.items():
            cols[f"GD {d}"].append(mse(gd_predict(t.x, t.y, t.xq, lr, d), t.yq))
        with torch.no_grad():
            for k, m in models.items():
                cols[f"LSA {k}"].append(mse(m(t.x, t.y, t.xq), t.yq))
            cr = constructed_lsa(preset.dim, 1, gd_lr[1], preset.key_dim, use_rope=True, dtype=torch.float32)
            cols["constructed GD weights + RoPE"].append(mse(cr(t.x, t.y, t.xq), t.yq))
    return cols


def rope_pair_energy(model: LinearSelfAttention, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a one-layer RoPE LSA puts its weight: per rotation pair j, its frequency θ_j and its share of
    Σ_j |W_Q|_j |W_K|_j (row norms of both halves of the pair). → (θ [key_dim/2], share [key_dim/2])."""
    h = model.key_dim // 2
    wq, wk = model.w_q[0].detach(), model.w_k[0].detach()
    energy = (wq[:h].norm(dim=1) * wk[:h].norm(dim=1) + wq[h:].norm(dim=1) * wk[h:].norm(dim=1)).numpy()
    freq = 1.0 / (base ** (np.arange(h) * 2 / model.key_dim))
    return freq, energy / energy.sum()


# ----------------------------------------------------------------------------- training and cache


def train_lsa(
    model: LinearSelfAttention, preset: RegressionSizes, seed: int = 0, desc: str = "train LSA"
) -> list[tuple[int, float]]:
    """Adam (cosine decay to 10 %) on the squared error of fresh tasks each step.

    Returns the mean loss every 100 steps as (step, loss) pairs.
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=preset.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / preset.steps))
    )
    curve, acc = [], 0.0
    threads = torch.get_num_threads()
    torch.set_num_threads(preset.threads)
    try:
        for step in progress(range(preset.steps), desc, total=preset.steps):
            t = sample_tasks(preset.batch, preset.n_ctx, preset.dim, gen, preset.noise)
            loss = ((model(t.x, t.y, t.xq) - t.yq) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            acc += loss.item()
            if (step + 1) % 100 == 0:
                curve.append((step + 1, acc / 100))
                acc = 0.0
    finally:
        torch.set_num_threads(threads)
    return curve


def key_parts(preset: RegressionSizes, depth: int, key_dim: int, use_rope: bool, seed: int) -> dict:
    """Everything that shapes a trained LSA: the training sizes (not the evaluation sizes), depth, key
    width, RoPE, seed and the source of :data:`TRAINING_MODULES`."""
    return {
        "preset": {k: v for k, v in asdict(preset).items() if k not in ("eval_tasks", "eval_ns")},
        "depth": depth,
        "key_dim": key_dim,
        "rope": use_rope,
        "seed": seed,
        "code": code_hash(*TRAINING_MODULES),
    }


def load_or_train_lsa(
    preset: RegressionSizes, depth: int, use_rope: bool = False, key_dim: int | None = None, seed: int = 0
) -> tuple[LinearSelfAttention, list[tuple[int, float]], bool]:
    """A trained LSA (from ``cache_dir()/testbeds`` when present) → (model, loss curve, from_cache)."""
    key_dim = key_dim or preset.key_dim
    parts = key_parts(preset, depth, key_dim, use_rope, seed)
    path = cache_dir() / "testbeds" / f"lsa-{content_key(parts)}.pt"
    torch.manual_seed(seed)
    model = LinearSelfAttention(preset.dim, depth, key_dim, use_rope)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            model.load_state_dict(blob["state_dict"])
        except Exception as exc:
            raise ModelError(
                f"cached weights {path} cannot be read ({exc}); delete the file to retrain"
            ) from exc
        return model.eval(), blob["curve"], True
    name = f"LSA depth {depth}" + (f", RoPE, key dim {key_dim}" if use_rope else "")
    if depth > 1:
        preset = replace(preset, steps=preset.deep_steps, lr=preset.deep_lr)
    curve = train_lsa(model, preset, seed, desc=name)
    save_torch({"state_dict": model.state_dict(), "curve": curve, "key_parts": parts}, path)
    return model.eval(), curve, False

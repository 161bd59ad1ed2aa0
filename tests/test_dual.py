"""The dual model: hand-computed cases, random-weight equivalences, and the flagship test —
our per-head dual rebuild reproduces a real LLM's attention outputs (as minGPT checks its GPT
against Hugging Face's)."""

from __future__ import annotations

import math

import pytest
import torch

from lrgd.dual import algebra as dual
from lrgd.dual.equivalence import delta_o_study, rebuild_errors
from lrgd.errors import ConfigError
from lrgd.llm import forward_captured
from lrgd.rec.prompts import Demonstration, Prompt, build_prompt, drop_span, prompt_parts

f64 = torch.float64


def _head(n: int, d: int, dv: int, seed: int, dtype=f64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(d, generator=g, dtype=dtype)
    k = torch.randn(n, d, generator=g, dtype=dtype)
    v = torch.randn(n, dv, generator=g, dtype=dtype)
    demo = torch.zeros(n, dtype=torch.bool)
    demo[torch.randperm(n, generator=g)[: n // 3]] = True
    return q, k, v, demo


# ----------------------------------------------------------------------------- hand-computed values


def test_linear_dual_hand_computed():
    # Z: k=(1,0), v=(2,); D: k=(0,1), v=(3,). q=(1,1): LA = 2*1 + 3*1 = 5.
    k = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=f64)
    v = torch.tensor([[2.0], [3.0]], dtype=f64)
    demo = torch.tensor([False, True])
    q = torch.tensor([1.0, 1.0], dtype=f64)
    d = dual.linear_dual(k, v, demo)
    assert torch.equal(d.w_zsl, torch.tensor([[2.0, 0.0]], dtype=f64))
    assert torch.equal(d.delta_w_icl, torch.tensor([[0.0, 3.0]], dtype=f64))
    assert d(q).item() == 5.0 == dual.linear_attention(q, k, v).item()
    # the dual loss at W_ZSL: -(3 * (W k_D)) = -(3 * 0) = 0; its gradient is -v k^T = [[0, -3]]
    assert dual.dual_loss(d.w_zsl, k[demo], v[demo]).item() == 0.0
    w1 = dual.gd_step(d.w_zsl, k[demo], v[demo], lr=0.5)
    assert torch.equal(w1, torch.tensor([[2.0, 1.5]], dtype=f64))


def test_softmax_split_hand_computed():
    # scores (scaling 1): Z: 0, D: ln 3  → Z_Z = 1, Z_D = 3, η = 3/4
    q = torch.tensor([1.0], dtype=f64)
    k = torch.tensor([[0.0], [math.log(3.0)]], dtype=f64)
    v = torch.tensor([[4.0], [8.0]], dtype=f64)
    sp = dual.softmax_split(q, k, v, torch.tensor([False, True]), scaling=1.0)
    assert sp.share.item() == pytest.approx(0.75, abs=1e-15)
    assert sp.out_z.item() == 4.0 and sp.out_d.item() == 8.0
    assert sp.out.item() == pytest.approx(7.0, abs=1e-14)  # 1/4*4 + 3/4*8
    assert sp.update.item() == pytest.approx(3.0, abs=1e-14)  # 3/4 * (8 - 4)


def test_positive_features_hand_computed():
    x = torch.tensor([[1.0, 0.0]], dtype=f64)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=f64)
    # φ_j(x) = exp(w_j·x − |x|²/2)/√2 → (e^{0.5}, e^{-0.5}) / √2
    expect = torch.tensor([[math.exp(0.5), math.exp(-0.5)]], dtype=f64) / math.sqrt(2)
    assert torch.allclose(dual.positive_features(x, w), expect, rtol=0, atol=1e-15)


def test_rope_rotates_pairs_hand_computed():
    # d=2: one frequency θ=1; position 1 rotates (1, 0) by 1 radian
    x = torch.tensor([[1.0, 0.0]], dtype=f64)
    out = dual.rope(x, torch.tensor([1]))
    assert torch.allclose(out, torch.tensor([[math.cos(1.0), math.sin(1.0)]], dtype=f64), atol=1e-15)


# ----------------------------------------------------------------------------- random weights


@pytest.mark.parametrize("seed", range(5))
def test_linear_and_gd_equivalence_float64(seed):
    q, k, v, demo = _head(60, 16, 12, seed)
    d = dual.linear_dual(k, v, demo)
    assert dual.relative_error(d(q), dual.linear_attention(q, k, v)).item() <= 1e-10
    w1 = dual.gd_step(d.w_zsl, k[demo], v[demo])
    assert dual.relative_error(w1, d.w_zsl + d.delta_w_icl, dim=None).item() <= 1e-10


@pytest.mark.parametrize("seed", range(5))
def test_rope_dual_equivalence_and_relative_positions(seed):
    q, k, v, demo = _head(50, 16, 8, seed)
    pos = torch.arange(50)
    kr, qr = dual.rope(k, pos), dual.rope(q[None], torch.tensor([50]))[0]
    assert (
        dual.relative_error(dual.linear_dual(kr, v, demo)(qr), dual.linear_attention(qr, kr, v)).item()
        <= 1e-10
    )
    # (R_m k)ᵀ (R_n q) depends only on n − m
    shifted = dual.rope(k, pos + 17) @ dual.rope(q[None], torch.tensor([67]))[0]
    assert torch.allclose(shifted, kr @ qr, rtol=0, atol=1e-10)


def test_rope_matches_transformers():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=2, rope_theta=10000.0)
    rot = LlamaRotaryEmbedding(cfg)
    x = torch.randn(1, 1, 7, 32, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(3, 10)[None]
    cos, sin = rot(x, pos)
    ref, _ = apply_rotary_pos_emb(x, x, cos, sin)
    ours = dual.rope(x[0, 0].double(), pos[0]).float()
    assert torch.allclose(ours, ref[0, 0], atol=1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_softmax_split_float32(seed):
    q, k, v, demo = _head(300, 64, 64, seed, dtype=torch.float32)
    sp = dual.softmax_split(q, k, v, demo)
    ref = torch.softmax(k.double() @ q.double() / 8.0, 0) @ v.double()
    assert dual.relative_error(sp.combined().double(), ref).item() <= 1e-6
    assert dual.relative_error(sp.out.double(), ref).item() <= 1e-6


def test_heads_split_groups_kv_heads_like_per_head_split():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(6, 8, generator=g, dtype=f64)  # 6 query heads
    k = torch.randn(2, 20, 8, generator=g, dtype=f64)  # 2 KV heads → groups of 3
    v = torch.randn(2, 20, 8, generator=g, dtype=f64)
    demo = torch.zeros(20, dtype=torch.bool)
    demo[5:11] = True
    sp = dual.heads_split(q, k, v, demo, scaling=0.3)
    lin = dual.heads_linear_update(q, k, v, demo)
    for h in range(6):
        one = dual.softmax_split(q[h], k[h // 3], v[h // 3], demo, scaling=0.3)
        assert torch.allclose(sp.out[h], one.out, atol=1e-14)
        assert torch.allclose(sp.share[h], one.share, atol=1e-14)
        assert torch.allclose(
            lin[h], dual.linear_dual(k[h // 3], v[h // 3], demo).delta_w_icl @ q[h], atol=1e-13
        )


def test_sliding_window_hides_old_keys():
    q, k, v, demo = _head(30, 8, 4, 3)
    sp = dual.heads_split(q[None], k[None], v[None], demo, scaling=0.35, window=10)
    ref = dual.softmax_split(q, k[-10:], v[-10:], demo[-10:], scaling=0.35)
    assert torch.allclose(sp.out[0], ref.out, atol=1e-14)


def test_kernel_dual_error_falls_with_features():
    q, k, v, demo = _head(80, 16, 8, 4)
    k, q = 0.3 * k, 0.3 * q
    exact = dual.softmax_split(q, k, v, demo).out
    errs = []
    for m in (32, 8192):
        e = []
        for r in range(6):
            w = dual.draw_features(m, 16, torch.Generator().manual_seed(r + 10 * m))
            e.append(
                dual.relative_error(dual.kernel_dual(k, v, demo, w)(dual.query_features(q, w)), exact).item()
            )
        errs.append(sum(x * x for x in e) / len(e))
    # 256x more features: mean squared error should fall by far more than 10x (≈ 256x in expectation)
    assert errs[1] < errs[0] / 10


def test_random_weight_checks_of_chapter_1():
    """The §1.1–1.3 measurements: identities hold, η = 1 is the only exact step, RoPE depends on
    relative positions only, and the random-feature error falls at the Monte Carlo rate m^(−1/2)."""
    from lrgd.dual import random_weights as rnd

    gen = torch.Generator().manual_seed(3)
    err = rnd.linear_dual_errors(gen, 3)
    assert len(err["split"]) == 3 and max(err["split"] + err["gd"]) <= 1e-10
    etas = [0.0, 0.5, 1.0, 1.5]
    sweep = rnd.step_size_sweep(gen, etas)
    assert sweep["gap"][2] <= 1e-12 < 0.01 < min(sweep["gap"][0], sweep["gap"][1], sweep["gap"][3])
    assert sweep["loss"][0] - sweep["loss"][1] == pytest.approx(sweep["loss"][1] - sweep["loss"][2])  # linear
    assert max(rnd.rope_dual_errors(gen, 3)) <= 1e-10
    moves = rnd.rope_shift_sweep(gen, [0, 8, 40])
    assert max(moves["together"]) <= 1e-12 and moves["moved"][0] == 0.0 and min(moves["moved"][1:]) > 1e-3
    soft = rnd.softmax_split_errors(gen, 2)
    assert max(soft["error"]) <= 1e-6 and all(0 < s < 1 for s in soft["share"])
    rf, slopes = rnd.kernel_dual_errors(gen, (16, 256, 4096), 4)
    assert list(rf.index) == [16, 256, 4096] and (rf.diff().iloc[1:] < 0).all().all()
    assert all(-0.65 <= s <= -0.35 for s in slopes.values()), slopes


def test_delta_o_summaries_are_bootstraps_over_prompts():
    from lrgd.dual.equivalence import PREDICTORS, delta_o_summary, paired_margin, per_prompt_ci
    from lrgd.metrics import bootstrap_ci

    rng = torch.Generator().manual_seed(0)
    stack = {f: torch.rand(5, 2, 3, generator=rng, dtype=f64).numpy() for f in PREDICTORS}
    per_prompt = stack["cos_linear"].reshape(5, -1).mean(1)
    assert per_prompt_ci(stack["cos_linear"], seed=1, n_boot=500) == bootstrap_ci(per_prompt, 500, 1)
    tab = delta_o_summary(stack, seed=1, n_boot=500, per_layer=True)
    assert list(tab.index) == list(PREDICTORS.values())
    assert tab.loc["linear ΔW_ICL q", "mean"] == pytest.approx(per_prompt.mean())
    assert tab.loc["random direction", "layer 1"] == pytest.approx(stack["cos_random"][:, 1].mean())
    diff = (stack["cos_softmax"] - stack["cos_placebo"]).reshape(5, -1).mean(1)
    assert paired_margin(stack, "cos_softmax", "cos_placebo", 1, 500) == bootstrap_ci(diff, 500, 1)


def test_sample_users_names_the_bad_size():
    from types import SimpleNamespace

    from lrgd.dual.equivalence import sample_users

    split = SimpleNamespace(test={f"u{i}": None for i in range(6)})
    users = sample_users(split, 4, seed=0)
    assert len(set(users)) == 4 and users == sample_users(split, 4, seed=0) and set(users) <= set(split.test)
    with pytest.raises(ConfigError, match="n_prompts=7"):
        sample_users(split, 7)


# ----------------------------------------------------------------------------- a transformers model


def _tiny_prompt(n: int = 40) -> Prompt:
    ids = torch.arange(3, 3 + n) % 97
    spans = {
        "instruction": (0, 8),
        "demo0": (8, 16),
        "demo1": (16, 22),
        "history": (22, n - 2),
        "answer": (n - 2, n),
    }
    return Prompt("", ids, spans)


def test_rebuild_every_head_of_tiny_llama(tiny_llama):
    p = _tiny_prompt()
    layers = forward_captured(tiny_llama, p.input_ids)
    assert sorted(layers) == [0, 1]
    assert layers[0].q.shape == (4, 40, 8) and layers[0].k.shape == (2, 40, 8)
    rb = rebuild_errors(layers, p.demo_mask)
    assert rb["error"].shape == (2, 4)
    assert rb["error"].max().item() <= 1e-10  # float64 model
    # every earlier position as well (not only the last)
    assert rebuild_errors(layers, p.demo_mask, pos=25)["error"].max().item() <= 1e-10


def test_gap_positions_are_honoured(tiny_llama):
    """Dropping the demonstrations but keeping positions: layer-0 q/k at the final token are unchanged."""
    p = _tiny_prompt()
    with_layers = forward_captured(tiny_llama, p.input_ids)
    ids, pos = drop_span(p, p.demo_mask)
    without = forward_captured(tiny_llama, ids, position_ids=pos)
    assert without[0].q.shape[1] == 40 - 14
    assert torch.allclose(without[0].q[:, -1], with_layers[0].q[:, -1], atol=1e-12)
    # with positions renumbered 0..T'-1 instead, RoPE changes the query
    plain = forward_captured(tiny_llama, ids)
    assert not torch.allclose(plain[0].q[:, -1], with_layers[0].q[:, -1], atol=1e-6)


def test_delta_o_decomposition_tiny(tiny_llama):
    s = delta_o_study(tiny_llama, _tiny_prompt(60))
    assert s.decomposition_error <= 1e-10
    assert s.cos_softmax.shape == (2, 4)
    # layer 0 has no earlier layer: the direct step is all of Δo
    assert s.indirect_ratio[0].max().item() <= 1e-10
    assert torch.allclose(s.cos_softmax[0], torch.ones(4, dtype=f64), atol=1e-10)
    # an explicit placebo must stay outside the demonstrations (a clear error, not a silent answer)
    p = _tiny_prompt(60)
    with pytest.raises(ConfigError, match="placebo span overlaps"):
        delta_o_study(tiny_llama, p, placebo=p.mask("demo1"))


# ----------------------------------------------------------------------------- the flagship: a real LLM


@pytest.mark.llm
def test_flagship_rebuild_on_smollm2(smollm2):
    """Every head of every layer of SmolLM2-135M at the final token of a real prompt, ≤ 1e-5 in fp32."""
    parts = prompt_parts(
        ["Super Mario Odyssey", "Mario Kart 8 Deluxe"],
        [Demonstration(("Halo 3", "Gears of War 2"), "Halo: Reach"), Demonstration(("FIFA 18",), "FIFA 19")],
        ["The Legend of Zelda: Breath of the Wild", "Splatoon 2", "Forza Horizon 4"],
    )
    p = build_prompt(smollm2.tokenizer, parts, chat=True)
    layers = forward_captured(smollm2.model, p.input_ids)
    info = smollm2.info
    assert (info.n_layers, info.n_heads, info.n_kv_heads, info.head_dim) == (30, 9, 3, 64)
    t = len(p.input_ids)
    assert (
        layers[0].q.shape == (9, t, 64)
        and layers[0].k.shape == (3, t, 64)
        and layers[0].out.shape == (t, 9, 64)
    )
    rb = rebuild_errors(layers, p.demo_mask)
    assert rb["error"].shape == (30, 9)
    assert rb["error"].max().item() <= 1e-5
    assert ((rb["share"] > 0) & (rb["share"] < 1)).all()
    s = delta_o_study(smollm2.model, p)
    assert s.rebuild_error.max().item() <= 1e-5
    assert s.indirect_ratio[0].max().item() <= 1e-3  # layer 0: only float32 rounding


@pytest.mark.parametrize("dtype", [torch.float32, f64])
def test_heads_split_without_demonstrations(dtype):
    q, k, v, _ = _head(12, 8, 4, 5, dtype=dtype)
    none = torch.zeros(12, dtype=torch.bool)
    sp = dual.heads_split(q[None], k[None], v[None], none, scaling=0.35)
    assert torch.isfinite(sp.out).all() and sp.share.item() == 0.0
    assert torch.allclose(sp.out, sp.out_z) and torch.equal(sp.out_d, torch.zeros_like(sp.out_d))

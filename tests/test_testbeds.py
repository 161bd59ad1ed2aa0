"""Tests of the chapter-1b testbeds: in-context regression (A), the recommendation world (B)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from lrgd.config import WorldConfig, get_profile
from lrgd.errors import ConfigError
from lrgd.metrics import bootstrap_ci, expected_random_metrics, per_user_metrics, ranks_of_targets
from lrgd.testbeds import icl_regression as icl
from lrgd.testbeds import recworld as rw
from lrgd.testbeds import tiny_decoder as td

# ----------------------------------------------------------------------------- testbed A


def test_task_shapes_and_determinism():
    a = icl.sample_tasks(7, 5, 3, torch.Generator().manual_seed(1))
    b = icl.sample_tasks(7, 5, 3, torch.Generator().manual_seed(1))
    assert a.x.shape == (7, 5, 3) and a.y.shape == (7, 5) and a.xq.shape == (7, 3) and a.yq.shape == (7,)
    assert torch.equal(a.x, b.x) and torch.equal(a.yq, b.yq)
    assert torch.allclose(a.yq, (a.xq * a.w).sum(-1), atol=1e-6)  # noise-free tasks
    assert icl.tokens(a.x, a.y, a.xq).shape == (7, 6, 4)


def test_gd_weights_equal_an_autograd_step():
    t = icl.sample_tasks(4, 6, 3, torch.Generator().manual_seed(2), dtype=torch.float64)
    w = torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)
    loss = (((t.x @ w[:, :, None])[..., 0] - t.y) ** 2).sum() / (2 * 6)  # Eq. (A2)'s loss, summed over tasks
    (grad,) = torch.autograd.grad(loss, w)
    assert torch.allclose(icl.gd_weights(t.x, t.y, 0.3, 1), -0.3 * grad, rtol=0, atol=1e-14)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_constructed_lsa_is_gd(depth):
    t = icl.sample_tasks(64, 10, 5, torch.Generator().manual_seed(depth), dtype=torch.float64)
    ref = icl.gd_predict(t.x, t.y, t.xq, 0.6, depth)
    out = icl.constructed_lsa(5, depth, 0.6)(t.x, t.y, t.xq)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-10
    # with RoPE: GD on position-rotated inputs, Eq. (A3)
    fx, fq = icl.rotated_inputs(t.x, t.xq, 6)
    out_r = icl.constructed_lsa(5, depth, 0.6, key_dim=6, use_rope=True)(t.x, t.y, t.xq)
    ref_r = icl.gd_predict(fx, t.y, fq, 0.6, depth)
    assert ((out_r - ref_r).norm() / ref_r.norm()).item() < 1e-10
    assert ((out_r - ref).norm() / ref.norm()).item() > 0.05  # RoPE does change the predictor


def test_trained_lsa_matches_one_gd_step():
    preset = get_profile("ci").section("regression", dim=5, n_ctx=10, key_dim=6, steps=1500, batch=128)
    torch.manual_seed(0)
    model = icl.LinearSelfAttention(preset.dim, 1, preset.key_dim)
    icl.train_lsa(model, preset, seed=0)
    ev = icl.sample_tasks(1000, 10, 5, torch.Generator().manual_seed(9))
    lr = icl.tune_gd_lr(ev, 1)
    row = icl.compare_with_gd(model, 1, ev, lr)
    # References computed here, not taken from a run. The *optimum* predictor of these noise-free tasks
    # (N = 10 ≥ d = 5, so least squares recovers w) has sensitivity w; one GD step has (η/N) XᵀX w,
    # which differs from it. A trained layer that were merely a good predictor, not a GD step, would sit
    # at least as far from GD as the optimum does, so we ask for a tenth of the optimum's distance.
    cos_optimum = torch.nn.functional.cosine_similarity(ev.w, icl.sensitivity(
        lambda x, y, xq: icl.gd_predict(x, y, xq, lr, 1), ev), dim=-1).mean().item()  # fmt: skip
    assert cos_optimum < 0.99  # the reference is informative: GD is not the optimum here
    assert 1 - row["cos(∂ŷ/∂x_q)"] < 0.1 * (1 - cos_optimum), (row, cos_optimum)
    # Loss: chance level is predicting 0 (loss E[y²]); tuned one-step GD is what one layer can reach.
    # The trained layer must close at least 90 % of the gap between the two.
    l_zero = icl.mse(torch.zeros_like(ev.yq), ev.yq)
    assert row["loss LSA"] - row["loss GD (L steps)"] < 0.1 * (l_zero - row["loss GD (L steps)"]), row


def test_lsa_weight_cache_keys_config_and_code(tmp_path, monkeypatch):
    monkeypatch.setenv("LRGD_CACHE", str(tmp_path))
    preset = get_profile("ci").section("regression", dim=3, key_dim=4, steps=2, batch=4)
    model, _, cached = icl.load_or_train_lsa(preset, 1, seed=0)
    again, _, cached_again = icl.load_or_train_lsa(replace(preset, eval_tasks=7), 1, seed=0)
    assert not cached and cached_again and torch.equal(model.w_q, again.w_q)
    assert not icl.load_or_train_lsa(replace(preset, lr=1e-3), 1, seed=0)[2]  # a training size: new key
    monkeypatch.setattr(icl, "code_hash", lambda *modules: "edited")
    assert not icl.load_or_train_lsa(preset, 1, seed=0)[2]  # edited training code: new key
    assert len(list((tmp_path / "testbeds").glob("lsa-*.pt"))) == 3


def test_testbed_a_measurements():
    preset = get_profile("ci").section("regression", dim=4, n_ctx=6, key_dim=6, eval_tasks=50, eval_ns=(2, 8))
    err = icl.construction_errors(preset, torch.Generator().manual_seed(0), depths=(1, 2), n_tasks=20)
    assert max(err["plain"] + err["rope"]) < 1e-10 and min(err["rope_vs_plain"]) > 0.01
    gd_lr = {1: 0.5}
    models = {1: icl.constructed_lsa(4, 1, 0.5, dtype=torch.float32)}  # exactly one GD step of size 0.5
    cols = icl.loss_vs_context(models, preset, gd_lr, torch.Generator().manual_seed(1))
    assert set(cols) == {"zero", "least squares", "GD 1", "LSA 1", "constructed GD weights + RoPE"}
    assert np.allclose(cols["LSA 1"], cols["GD 1"], rtol=1e-4)
    assert cols["least squares"][1] < 1e-6 < cols["least squares"][0]  # N = 8 ≥ d recovers w; N = 2 cannot
    ev = icl.sample_tasks(30, 6, 4, torch.Generator().manual_seed(2))
    row = icl.compare_with_gd(models[1], 1, ev, 0.5)
    assert row["cos(∂ŷ/∂x_q)"] == pytest.approx(1.0) and row["pred. diff ‖ŷ_LSA − ŷ_GD‖ (RMS)"] < 1e-5
    rope_model = icl.constructed_lsa(4, 1, 0.5, key_dim=6, use_rope=True, dtype=torch.float32)
    freq, share = icl.rope_pair_energy(rope_model)
    assert freq[0] == 1.0 and np.all(np.diff(freq) < 0)
    # W_Q = W_K = [I_4 0]: rows 0–3 are unit rows, 4–5 zero; pair j holds rows (j, j + 3) → energies 2, 1, 1
    assert np.allclose(share, [0.5, 0.25, 0.25])


def test_regression_preset_validation():
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("laptop").section("regression")
    with pytest.raises(ConfigError, match="even"):
        get_profile("ci").section("regression", key_dim=11)
    with pytest.raises(ConfigError, match="unknown regression option"):
        get_profile("ci").section("regression", width=3)


# ----------------------------------------------------------------------------- testbed B: world


def small_world_config(**kw) -> WorldConfig:
    base = dict(
        n_items=32,
        n_clusters=1,
        groups_per_cluster=4,
        latent_dim=4,
        history_len=1,
        demo_history_len=2,
        n_candidates=10,
        k_max=3,
    )
    return get_profile("ci").section("world", **(base | kw))


def test_world_determinism_and_shapes():
    cfg = get_profile("ci").section("world")
    w1, w2 = rw.RecWorld.generate(cfg, 3), rw.RecWorld.generate(cfg, 3)
    assert np.array_equal(w1.item_vecs, w2.item_vecs) and np.array_equal(w1.group_prefs, w2.group_prefs)
    b1 = w1.sample_prompts(5, 4, np.random.default_rng(0), "mixed")
    b2 = w2.sample_prompts(5, 4, np.random.default_rng(0), "mixed")
    assert np.array_equal(b1.tokens(), b2.tokens())
    tok = b1.tokens()
    assert tok.shape == (5, cfg.seq_len(4))
    assert (tok[:, 0] == rw.BOS).all() and (tok[:, -1] == rw.ARROW).all()
    assert (b1.queries.candidates[:, 0] == b1.queries.target).all()
    assert all(len(set(c)) == cfg.n_candidates for c in b1.queries.candidates)
    p = b1.prompt(0)
    assert int(p.demo_mask.sum()) == 4 * (cfg.demo_history_len + 3)
    assert p.spans["answer"] == (tok.shape[1] - 1, tok.shape[1])
    assert p.input_ids[p.spans["history"][0]].item() == rw.QUERY
    assert rw.RecWorld.generate(cfg, 4).item_vecs[0, 0] != w1.item_vecs[0, 0]
    # kinds: groups follow the kind, corrupted demos have no group
    d = b1.demos
    assert (d.group[d.kind == rw.SAME] == np.repeat(b1.queries.group[:, None], 4, 1)[d.kind == rw.SAME]).all()
    assert (d.group[d.kind == rw.CORRUPTED] == -1).all()
    other = d.kind == rw.OTHER
    assert (d.group[other] != np.repeat(b1.queries.group[:, None], 4, 1)[other]).all()


def test_drift_and_user_noise_still_sample():
    cfg = small_world_config(drift=0.5, user_noise=0.3)
    w = rw.RecWorld.generate(cfg, 0)
    b = w.sample_prompts(6, 2, np.random.default_rng(1), "same")
    assert w.bayes_scores(b).shape == (6, cfg.n_candidates)
    assert np.isfinite(w.oracle_scores(b)).all()
    assert not np.allclose(w.group_log_probs(0), w.group_log_probs(5))  # preferences move with time


def hand_world(kind_probs=(1.0, 0.0, 0.0)) -> rw.RecWorld:
    """3 items with v = (1, 0, −1), 2 groups with u = ±ln 2: p(·|g0) = (4, 2, 1)/7, p(·|g1) = (1, 2, 4)/7."""
    cfg = WorldConfig(
        n_items=3,
        n_clusters=1,
        groups_per_cluster=2,
        latent_dim=1,
        temperature=1.0,
        history_specificity=1.0,
        history_len=1,
        demo_history_len=1,
        n_candidates=3,
        kind_probs=kind_probs,
        k_max=1,
    )
    ln2 = math.log(2)
    return rw.RecWorld(
        cfg,
        0,
        item_vecs=np.array([[1.0], [0.0], [-1.0]]),
        item_bias=np.zeros(3),
        centres=np.zeros((1, 1)),
        group_prefs=np.array([[ln2], [-ln2]]),
        drift_dirs=np.zeros((2, 1)),
        cluster_of=np.array([0, 0]),
    )


def hand_batch(with_demo: bool) -> rw.PromptBatch:
    q = rw.Queries(
        group=np.array([0]),
        pref=np.array([[math.log(2)]]),
        history=np.array([[0]]),
        target=np.array([0]),
        candidates=np.array([[0, 1, 2]]),
    )
    k = 1 if with_demo else 0
    d = rw.Demos(
        kind=np.full((1, k), rw.SAME),
        group=np.full((1, k), 1),
        history=np.full((1, k, 1), 2),
        next_item=np.full((1, k), 2),
    )
    return rw.PromptBatch(q, d)


def test_bayes_ranking_by_hand():
    w = hand_world()
    p0, p1 = np.array([4, 2, 1]) / 7, np.array([1, 2, 4]) / 7
    assert np.allclose(np.exp(w.group_log_probs()), [p0, p1])
    # history (item 0) only: posterior ∝ (4/7, 1/7) = (0.8, 0.2)
    b = hand_batch(False)
    assert np.allclose(np.exp(w.group_log_posterior(b)), [[0.8, 0.2]])
    expected = 0.8 * p0 + 0.2 * p1  # (3.4, 2, 1.6) / 7
    assert np.allclose(np.exp(w.bayes_scores(b)), [expected])
    assert np.allclose(np.exp(w.oracle_scores(b)), [p0])
    # one same-group demonstration (2 → 2): likelihoods (1/7)² and (4/7)² → posterior (0.2, 0.8)
    bd = hand_batch(True)
    assert np.allclose(np.exp(w.group_log_posterior(bd)), [[0.2, 0.8]])
    assert np.allclose(np.exp(w.bayes_scores(bd)), [0.2 * p0 + 0.8 * p1])
    assert np.argsort(-w.bayes_scores(bd)[0]).tolist() == [2, 1, 0]  # the demonstration flips the ranking
    # usefulness for the true group g0: log 0.2 − log 0.8 = −log 4
    assert np.allclose(w.demo_usefulness(bd), [[-math.log(4)]])
    # with a kind prior (½ same, ½ corrupted) each group's evidence is ½ p(d|g) + ½ (1/3)²
    wm = hand_world((0.5, 0.0, 0.5))
    e0, e1 = 0.5 / 49 + 0.5 / 9, 0.5 * 16 / 49 + 0.5 / 9
    post = np.array([4 / 7 * e0, 1 / 7 * e1])
    assert np.allclose(np.exp(wm.group_log_posterior(bd)), [post / post.sum()])


def test_ranking_metrics_by_hand():
    m = rw.ranking_metrics(np.array([[0.5, 0.9, 0.1], [0.9, 0.5, 0.1], [0.1, 0.5, 0.9]]), k=2)
    assert np.allclose(m["HR@2"], [1, 1, 0])
    assert np.allclose(m["NDCG@2"], [1 / math.log2(3), 1, 0])
    # a tie follows the library's one convention (lrgd.metrics): a seeded order, rank 1 or 2 here
    scores = np.array([[1.0, 1.0, 0.0]])
    tie = rw.ranking_metrics(scores, k=1)
    assert tie == per_user_metrics(ranks_of_targets(scores), ("HR@1", "NDCG@1"))
    assert tie["NDCG@1"][0] in (0.0, 1.0)


def test_sweep_summary_pairs_gains_with_k0():
    rows = [
        {"scorer": "m", "kind": "same", "k": 0, "NDCG@10": np.array([0.5, 0.2, 1.0]), "HR@10": np.ones(3)},
        {"scorer": "m", "kind": "same", "k": 2, "NDCG@10": np.array([1.0, 0.2, 1.0]), "HR@10": np.ones(3)},
    ]
    sweep = rw.sweep_summary(rows, seed=0)
    r = rw.sweep_row(sweep, "m", "same", 2)
    assert math.isclose(r["mean"], 2.2 / 3) and math.isclose(r["gain"], 0.5 / 3)
    assert (r["gain lo"], r["gain hi"]) == bootstrap_ci([0.5, 0.0, 0.0], rw.N_BOOT, 0)[1:]
    assert rw.sweep_row(sweep, "m", "same", 0)["gain"] == 0.0
    with pytest.raises(ConfigError, match="no single sweep row"):
        rw.sweep_row(sweep, "m", "other", 2)
    table = rw.sweep_table(sweep, ("m",))
    assert table.loc[("same", 2), ("gain vs k=0 [95% CI]", "m")].startswith("0.167 [")


def test_usefulness_ordering():
    """Usefulness against its chance level and its ceiling, both computed from the world.

    Chance: a demonstration that tells nothing about the query's group moves log p(g* | ·) by 0 nats.
    Ceiling: no demonstration can raise log p(g* | history, d) above 0, so a demonstration's usefulness
    is at most −log p(g* | history). Same-group demonstrations are evidence for g* (above chance),
    other-group ones for a wrong group (below chance), and random items are nearly uninformative, so
    their CI lies strictly between the other two.
    """
    w = rw.RecWorld.generate(get_profile("ci").section("world"), 0)
    ci = {}
    for kind in rw.KINDS:
        b = w.sample_prompts(400, 1, np.random.default_rng([1, len(kind)]), kind)
        u = w.demo_usefulness(b)[:, 0]
        ceiling = -w.group_log_posterior(b, use_demos=False)[np.arange(len(b)), b.queries.group]
        assert (u <= ceiling + 1e-12).all()
        ci[kind] = bootstrap_ci(u, seed=0)
    assert ci["same"][1] > 0 > ci["other"][2]
    assert ci["other"][2] < ci["corrupted"][1] and ci["corrupted"][2] < ci["same"][1]
    mixed = w.sample_prompts(300, 1, np.random.default_rng(2), "mixed")
    u, kind = w.demo_usefulness(mixed)[:, 0], mixed.demos.kind[:, 0]
    tab = rw.usefulness_table(u, kind, seed=0)
    for k, name in enumerate(rw.KINDS):
        assert tuple(tab.loc[name, ["mean", "CI low", "CI high"]]) == bootstrap_ci(u[kind == k], rw.N_BOOT, 0)
        assert tab.loc[name, "share > 0"] == pytest.approx((u[kind == k] > 0).mean())


def test_world_validation():
    with pytest.raises(ConfigError, match="kind_probs"):
        get_profile("ci").section("world", kind_probs=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="unknown world option"):
        get_profile("ci").section("world", n_users=3)
    w = rw.RecWorld.generate(get_profile("ci").section("world"), 0)
    with pytest.raises(ConfigError, match="unknown demonstration kind"):
        w.sample_prompts(2, 1, np.random.default_rng(0), "random")


# ----------------------------------------------------------------------------- testbed B: tiny decoder

SMALL_DECODER = dict(hidden=32, layers=2, heads=2, kv_heads=1, intermediate=64, batch=32)


def test_tiny_decoder_learns_in_context():
    torch.set_num_threads(1)
    world = rw.RecWorld.generate(small_world_config(), 0)
    preset = get_profile("ci").section("decoder", steps=1200, **SMALL_DECODER)
    model = td.build_model(world.config, preset, seed=0)
    td.train(model, world, preset, seed=0)
    queries = world.sample_queries(500, np.random.default_rng(1))
    scorers = {"m": lambda b: td.score_candidates(model, b), "bayes": world.bayes_scores}
    rows = rw.icl_sweep(world, queries, scorers, (0, 3), kinds=("same",))
    ndcg = {(r["scorer"], r["k"]): r["NDCG@10"] for r in rows}
    # Chance level: a random ranking of the candidates, and a gain of 0.
    chance = expected_random_metrics(world.config.n_candidates, ("NDCG@10",))["NDCG@10"]
    assert bootstrap_ci(ndcg["m", 0])[1] > chance  # zero-shot, the model has learned the world
    gain, lo, _ = bootstrap_ci(ndcg["m", 3] - ndcg["m", 0])
    assert lo > 0.0, (gain, lo)  # in-context learning: 3 same-group demonstrations help
    # Ceiling: the Bayes observer of the same tokens maximises expected NDCG (uniform negatives), so no
    # model beats it beyond noise — a larger "gain" would mean leaked information (a real defect).
    # 1200 steps of a 2-layer, width-32 model are asked to realise a fifth of the ceiling's gain.
    bayes_gain, _, bayes_hi = bootstrap_ci(ndcg["bayes", 3] - ndcg["bayes", 0])
    assert 0.2 * bayes_gain < gain and lo < bayes_hi, (gain, bayes_gain)
    assert bootstrap_ci(ndcg["m", 0] - ndcg["bayes", 0])[1] <= 0.0  # zero-shot: not above the ceiling


def test_weight_cache_round_trip(tmp_path, monkeypatch):
    monkeypatch.setenv("LRGD_CACHE", str(tmp_path))
    world = rw.RecWorld.generate(small_world_config(), 0)
    preset = get_profile("ci").section("decoder", steps=3, **SMALL_DECODER)
    first = td.load_or_train(world, preset, seed=0)
    second = td.load_or_train(world, preset, seed=0)
    assert not first.from_cache and second.from_cache and first.path == second.path
    assert first.path.parent == tmp_path / "testbeds" and not list(first.path.parent.glob("*.tmp"))
    for (k, a), (_, b) in zip(first.model.state_dict().items(), second.model.state_dict().items()):
        assert torch.equal(a, b), k
    # evaluation sizes do not change the key; a training size does
    assert td.weights_path(world, replace(preset, eval_queries=7), 0) == first.path
    assert td.weights_path(world, replace(preset, steps=4), 0) != first.path
    # the source of the training code is part of the key: an edit to it retrains
    monkeypatch.setattr(td, "code_hash", lambda *modules: "edited")
    assert td.weights_path(world, preset, 0) != first.path
    b = world.sample_prompts(3, 2, np.random.default_rng(0), "same")
    assert np.array_equal(td.score_candidates(first.model, b), td.score_candidates(second.model, b))


def test_dual_rebuild_on_the_tiny_decoder():
    from lrgd.dual.equivalence import delta_o_study, rebuild_errors
    from lrgd.llm import forward_captured

    world = rw.RecWorld.generate(small_world_config(), 0)
    model = td.build_model(world.config, get_profile("ci").section("decoder", **SMALL_DECODER), seed=0).eval()
    b = world.sample_prompts(2, 3, np.random.default_rng(0), "same")
    p = b.prompt(0)
    err = rebuild_errors(forward_captured(model, p.input_ids), p.demo_mask)["error"]
    assert err.shape == (2, 2) and err.max().item() < 1e-5
    study = delta_o_study(model, p, placebo=p.mask("history"))
    assert torch.allclose(study.cos_softmax[0], torch.ones(2, dtype=torch.float64), atol=1e-4)  # layer 0
    assert torch.allclose(study.rebuild_error, err.to(study.rebuild_error.dtype))  # the same rebuild
    with pytest.raises(ConfigError, match="placebo"):
        delta_o_study(model, p, placebo=p.mask("demo0"))
    scores = td.score_candidates(model, b)
    assert scores.shape == (2, world.config.n_candidates)


def test_single_demo_reaction():
    world = rw.RecWorld.generate(small_world_config(), 0)
    model = td.build_model(world.config, get_profile("ci").section("decoder", **SMALL_DECODER), seed=0).eval()
    queries = world.sample_queries(6, np.random.default_rng(0))
    r = td.single_demo_reaction(model, world, queries, seed=0)
    assert {k: v.shape for k, v in r.items()} == {
        k: (6,) for k in ("kind", "usefulness", "model_gain", "bayes_gain")
    }
    one = world.with_demos(queries, 1, "mixed", np.random.default_rng([0, 4]))
    assert np.array_equal(r["kind"], one.demos.kind[:, 0])
    # the model's change is log p(target | k = 1) − log p(target | k = 0), read from its own log-probs
    lp = td.item_log_probs(model, one)[np.arange(6), queries.target]
    zero = world.with_demos(queries, 0, "mixed", np.random.default_rng([0, 4]))
    assert np.allclose(r["model_gain"], lp - td.item_log_probs(model, zero)[np.arange(6), queries.target])


def test_decoder_preset_validation():
    with pytest.raises(ConfigError, match="kv_heads"):
        get_profile("ci").section("decoder", heads=3, kv_heads=2)
    with pytest.raises(ConfigError, match="unknown decoder option"):
        get_profile("ci").section("decoder", depth=2)

"""Chapter 1 and Effect_D on the reader (lrgd.models.reader_dual): the rebuild and Δo identities, the
share η of a demonstration built to match the query, Effect_D's derivative rate against finite
differences, and Effect_D reading the validation item only."""

from __future__ import annotations

import types
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from lrgd.config import ReaderSizes
from lrgd.errors import ConfigError
from lrgd.models import reader as R
from lrgd.models import reader_dual as RD
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import make_synthetic, write_synthetic
from lrgd.rec.runner import Runner

# the profile's prompt layout (m = 3, L = 10, 512 tags), a tiny body
TINY = replace(ReaderSizes(), hidden=32, layers=2, heads=2, intermediate=64, titles=False, threads=1)
#: read-outs to test: without and (where this version of the reader has one) with the pointer vote
POINTERS = (False, True) if hasattr(TINY, "pointer") else (False,)
DATASET = "amazon-games"  # the synthetic data is written in this dataset's format


class FakeEmbedder:
    """Stands in for MiniLM (the anonymous reader reads no titles): a seeded unit vector per title."""

    fingerprint = "fake"

    def encode(self, texts):
        out = np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=384) for t in texts])
        return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _norm64(self, x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without transformers' float32 upcast (which would cap a float64 model's precision)."""
    return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)


def tiny_reader(seed: int = 0, dtype=torch.float32, qk_scale: float = 1.0, pointer: bool = False) -> R.Reader:
    """A random reader; ``qk_scale`` sharpens the attention (random init is nearly uniform). In float64
    its RMSNorms compute in float64 too."""
    torch.manual_seed(seed)
    model = R.Reader(replace(TINY, pointer=pointer) if hasattr(TINY, "pointer") else TINY).to(dtype).eval()
    if dtype == torch.float64:
        for mod in model.modules():
            if type(mod).__name__ == "LlamaRMSNorm":
                mod.forward = types.MethodType(_norm64, mod)
    with torch.no_grad():
        for layer in model.body.layers:
            layer.self_attn.q_proj.weight.mul_(qk_scale)
            layer.self_attn.k_proj.weight.mul_(qk_scale)
    return model


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    ds = make_synthetic(n_users=40, n_items=60, seed=1, min_len=5, max_len=9)
    write_synthetic(ds, root / DATASET, DATASET)
    r = Runner("ci", quiet=True, results_root=tmp_path_factory.mktemp("results"), data_dir=root)
    st = r.data(DATASET)
    r.memo(("catalogue", DATASET, st.fingerprint),
           lambda: R.build_catalogue(st.ds, st.split, st.fingerprint, FakeEmbedder()))  # fmt: skip
    return r


def ctx_for(runner, model) -> RD.ReaderContext:
    return RD.context(runner, DATASET, model=model, sizes=TINY)


def as_float64(cat: R.Catalogue) -> R.Catalogue:
    return replace(cat, title=cat.title.astype(np.float64), feats=cat.feats.astype(np.float64))


def some_user(ctx, j: int = 0) -> str:
    return sorted(ctx.runner.data(DATASET).split.test)[j]


@pytest.mark.parametrize("pointer", POINTERS)
def test_scores_follow_the_readers_forward(runner, pointer) -> None:
    """Identity: the study's own forward (embeddings + positions, pointer weights) is Reader.forward."""
    model = tiny_reader(pointer=pointer)
    ctx = ctx_for(runner, model)
    b = RD.user_prompt(ctx, some_user(ctx), "transition", 3)
    torch.testing.assert_close(RD.scores(model, ctx.cat, b), model(ctx.cat, b), rtol=0, atol=1e-6)
    assert RD.demo_mask(b).sum() == 3 * (TINY.demo_history + 1)
    if pointer:
        emb, pos = RD.forward_inputs(model, ctx.cat, b)
        hs = RD.hidden(model, emb, pos)
        a = RD.pointer_weight(model, hs[:, -1], hs) * (b.role == R.ROLES["next"])
        same = (b.slot[:, :, None] == b.cand_slot[:, None, :]).float()
        torch.testing.assert_close(torch.einsum("bt,btc->bc", a, same), model.read(hs, b))


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_rebuild_every_head_is_an_identity(runner, dtype, tol) -> None:
    model = tiny_reader(dtype=dtype, qk_scale=4.0)
    ctx = ctx_for(runner, model)
    cat = ctx.cat if dtype == torch.float32 else as_float64(ctx.cat)
    df = RD.rebuild(model, cat, RD.user_prompt(ctx, some_user(ctx), "random", 4))
    assert len(df) == TINY.layers * TINY.heads
    assert df["identity_error"].max() <= tol
    assert ((df["share"] > 0) & (df["share"] < 1)).all()


def test_share_is_larger_for_a_demonstration_that_matches_the_query() -> None:
    """Layer 0 with W_k = W_q and items carrying nothing: demonstration tokens whose input equals FINAL's
    have keys that match FINAL's query (up to RoPE), so their share η beats the same block with its own
    roles, head by head."""
    model = tiny_reader(seed=3, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in (model.pop.weight, model.pop.bias, model.tag.weight):
            p.zero_()
        attn = model.body.layers[0].self_attn
        attn.q_proj.weight.copy_(torch.randn(attn.q_proj.weight.shape, generator=g, dtype=torch.float64) / 2)
        attn.k_proj.weight.copy_(attn.q_proj.weight)
    feats = np.zeros((30, 2))
    cat = R.Catalogue(
        "toy", [], {}, np.zeros((30, 384)), feats, [], [], {}, np.zeros((0, 2)), np.arange(30), ""
    )
    demos = [([1, 2, 3], 4), ([5, 6, 7], 8)]
    e = R.encode(demos, list(range(10, 20)), list(range(20, 25)), TINY, np.random.default_rng(0))
    plain = R.collate([e], [0])
    demo = RD.demo_mask(plain)
    match = replace(plain, role=plain.role.clone())
    match.role[0, demo] = R.ROLES["final"]
    eta_plain = RD.rebuild(model, cat, plain, demo)
    eta_match = RD.rebuild(model, cat, match, demo)
    for df in (eta_plain, eta_match):
        assert ((df["share"] > 0) & (df["share"] < 1)).all() and df["identity_error"].max() <= 1e-10
    first = eta_plain["layer"] == 0
    assert (eta_match["share"][first].to_numpy() > 2 * eta_plain["share"][first].to_numpy()).all()


def test_delta_o_splits_exactly_and_layer_zero_is_all_direct(runner) -> None:
    model = tiny_reader(dtype=torch.float64, qk_scale=4.0)
    ctx = ctx_for(runner, model)
    cat = as_float64(ctx.cat)
    s = RD.delta_o(model, cat, RD.user_prompt(ctx, some_user(ctx, 1), "transition", 2))
    assert s.decomposition_error <= 1e-10 and s.rebuild_error.max() <= 1e-10
    assert s.cos_softmax.shape == (TINY.layers, TINY.heads)
    # layer 0 has no earlier layer and the positions are kept: Δo is all the direct softmax step
    assert s.indirect_ratio[0].max() <= 1e-9
    torch.testing.assert_close(s.cos_softmax[0], torch.ones(TINY.heads, dtype=torch.float64))
    # without the kept positions (renumbered 0..T'-1) layer 0 would change too: the gap matters
    b = RD.user_prompt(ctx, some_user(ctx, 1), "transition", 2)
    demo = RD.demo_mask(b)
    kept = RD.captured(model, cat, b, drop=demo)[0].out[-1]
    emb, _ = RD.forward_inputs(model, cat, b, drop=demo)
    from lrgd.llm import capture_attention

    with torch.no_grad(), capture_attention(model.body) as layers:
        RD.hidden(model, emb, torch.arange(emb.shape[1])[None])
    assert not torch.allclose(layers[0].out[-1], kept, atol=1e-8)


@pytest.mark.parametrize("pointer", POINTERS)
@pytest.mark.parametrize("j", [0, 1, 2])
def test_derivative_rate_is_the_slope_of_the_loss_in_alpha(runner, j, pointer) -> None:
    """Effect_D(rate="derivative") = −dL_u/dα at α = 0, where α scales the attention weight every later
    token gives the demonstration and its pointer vote (Richardson-extrapolated forward differences, float64).
    Checked for a pool demonstration and for one whose next item is a candidate (so the vote counts)."""
    model = tiny_reader(seed=j, dtype=torch.float64, qk_scale=4.0, pointer=pointer)
    ctx = ctx_for(runner, model)
    cat = as_float64(ctx.cat)
    user = some_user(ctx, j)
    pool = [c.demo for c in RD.candidate_pool(ctx, user, 6)]
    sc0 = RD.validation_context(ctx, user, pool)
    copy = (pool[j][0], sc0.cands[sc0.label])  # names the validation item
    demos = [pool[j], copy]
    sc = RD.validation_context(ctx, user, [*pool, copy])
    gain, zero = RD.true_gains(model, cat, sc, demos, TINY)
    est = RD.effects(model, cat, sc, demos, TINY)
    assert RD.user_state(model, cat, sc, TINY).loss == pytest.approx(zero, abs=1e-9)
    for i, demo in enumerate(demos):
        l0 = RD.loss_with_alpha(model, cat, sc, demo, TINY, 0.0)
        assert l0 == pytest.approx(zero, abs=1e-9)  # α = 0 is the zero-shot prompt (with the gap)
        assert RD.loss_with_alpha(model, cat, sc, demo, TINY, 1.0) == pytest.approx(zero - gain[i], abs=1e-9)

        def slope(eps: float) -> float:
            return -(RD.loss_with_alpha(model, cat, sc, demo, TINY, eps) - l0) / eps  # noqa: B023

        fd = 2 * slope(1e-5) - slope(2e-5)  # O(ε²)
        assert abs(fd) > 1e-4  # a slope worth checking
        assert est["derivative"][i] == pytest.approx(fd, rel=1e-6)
        if not pointer:  # (a vote, the same for both rates, can dominate this comparison)
            assert est["secant"][i] != pytest.approx(fd, rel=1e-2)  # the secant rate is another number


def test_effect_d_reads_the_validation_item_only(runner) -> None:
    """A different test item changes the true test gain, never Effect_D (nor the validation gain)."""
    model = tiny_reader(seed=5, qk_scale=4.0)
    ctx = ctx_for(runner, model)
    split = runner.data(DATASET).split
    user = some_user(ctx, 3)
    before = RD.effect_study(ctx, [user], n_demos=6)
    shown = {i for c in RD.candidate_pool(ctx, user, 6) for i in (*c.history, c.next_item)}
    hist, target = split.test[user]
    feats = ctx.cat.feats
    other = next(  # an item the anonymous reader can tell apart from the target (its popularity differs)
        i for i in runner.data(DATASET).ds.titled_ids
        if ctx.cat.index[i] not in shown and i not in hist
        and not np.allclose(feats[ctx.cat.index[i]], feats[ctx.cat.index[target]])
    )  # fmt: skip
    split.test[user] = (hist, other)
    try:
        after = RD.effect_study(ctx, [user], n_demos=6)
    finally:
        split.test[user] = (hist, target)
    np.testing.assert_array_equal(before.kinds, after.kinds)
    for rate in before.effect:
        np.testing.assert_array_equal(before.effect[rate], after.effect[rate])
    np.testing.assert_array_equal(before.gain_valid, after.gain_valid)
    assert not np.allclose(before.gain_test, after.gain_test)


def test_study_tables_have_their_rows(runner) -> None:
    model = tiny_reader(seed=1, qk_scale=4.0, pointer=POINTERS[-1])
    ctx = ctx_for(runner, model)
    users = sorted(runner.data(DATASET).split.test)[:4]
    st = RD.effect_study(ctx, users, n_demos=9)
    assert st.gain_test.shape == (9, 4) and set(st.kinds.ravel()) <= set(RD.KINDS)
    assert (st.kinds == "corrupted").sum(0).tolist() == [3] * 4
    rho = RD.effect_correlations(st, n_boot=50)
    assert (rho["pooled lo"] <= rho["pooled ρ"]).all() and (rho["pooled ρ"] <= rho["pooled hi"]).all()
    share = RD.demo_share(ctx, users, k=2, n_boot=50)
    both = share[share["layer"] == "all"].set_index("quantity")["mean"]
    assert both["transition − random"] == pytest.approx(both["transition"] - both["random"])
    assert share.attrs["max_identity_error"] <= 1e-5
    votes = share[share["layer"] == "pointer"]
    assert len(votes) == (5 if POINTERS[-1] else 0) and (votes["mean"][:3] > 0).all()  # softplus > 0


def test_reader_effect_selector_through_the_runner(runner, monkeypatch) -> None:
    """The selector puts the best-ranked real demonstrations into the runner's prompts; an LLM is refused."""
    model = tiny_reader(seed=2, qk_scale=4.0)
    monkeypatch.setattr(runner, "trained", lambda name: R.Trained(model, None, {}))
    monkeypatch.setattr(runner, "model_source", lambda name: ("tiny.pt", "tiny"))
    monkeypatch.setattr(runner, "reader_sizes", lambda name: TINY)
    cfg = EvalConfig(DATASET, "reader-effect", k=2, n_users=3, model="trained:reader-anon", guard="own",
                     params={"effect_pool": 6})  # fmt: skip
    res = runner.run(cfg.validate())
    recs = runner.records(cfg)
    ctx = ctx_for(runner, model)
    for rec in recs:
        order, scores = RD.ReaderEffectSelector(effect_pool=6).ranking(ctx, rec["user"])
        assert [tuple(s) for s in rec["demo_sources"]] == order[:2]  # nothing guarded here
        assert rec["effect"] == pytest.approx(scores[:2], abs=1e-5)
    assert res["n_users"] == 3
    with pytest.raises(ConfigError, match="trained reader"):
        RD.ReaderEffectSelector().select(runner, EvalConfig(DATASET, "reader-effect", k=1), "u", 1, [])
    with pytest.raises(ConfigError, match="effect-rate"):
        RD.ReaderEffectSelector(effect_rate="slope").validate()


def test_perturbed_variants_are_titled_copies_and_rate_zero_copies_exactly(runner) -> None:
    ctx = ctx_for(runner, tiny_reader())
    demos = [c.demo for c in RD.candidate_pool(ctx, some_user(ctx), 6, corrupted=False)]
    rng = np.random.default_rng(0)
    same = RD.perturbed_variants(ctx.cat, demos, "random", 0.0, 3, rng)
    assert same == [(list(map(int, h)), int(x)) for h, x in demos] * 3  # identity: rate 0 changes nothing
    noisy = RD.perturbed_variants(ctx.cat, demos, "random", 1.0, 2, rng)
    titled = set(map(int, ctx.cat.titled))
    assert len(noisy) == 2 * len(demos) and all(set(h) | {x} <= titled for h, x in noisy)
    assert [len(h) for h, _ in noisy] == [len(h) for h, _ in demos] * 2  # substitution keeps lengths
    assert noisy != same[: len(noisy)]  # every position was redrawn


def test_robust_reader_effect_is_plain_effect_d_without_noise_and_differs_with_it(runner) -> None:
    """Identity: one noiseless copy and λ = 0 give reader-effect's ranking; with noisy copies and λ > 0
    the score is mean − λ·std of Effect_D over the copies (recomputed here from the same draws)."""
    from lrgd.robust.perturb import robust_score

    ctx = ctx_for(runner, tiny_reader(seed=2, qk_scale=4.0))
    user = some_user(ctx, 1)
    plain = RD.ReaderEffectSelector(effect_pool=6).ranking(ctx, user)
    clean = RD.ReaderRobustEffectSelector(effect_pool=6, copies=1, lam=0.0, rate=0.0).ranking(ctx, user)
    assert clean[0] == plain[0] and clean[1] == pytest.approx(plain[1], abs=1e-6)

    sel = RD.ReaderRobustEffectSelector(effect_pool=6, copies=3, lam=2.0, rate=0.5)
    order, score = sel.ranking(ctx, user)
    cands = RD.candidate_pool(ctx, user, 6, corrupted=False)
    demos = [c.demo for c in cands]
    copies = RD.perturbed_variants(ctx.cat, demos, "random", 0.5, 3, RD._user_rng(ctx, user, 8))
    sc = RD.validation_context(ctx, user, demos)
    e = RD.effects(ctx.model, ctx.cat, sc, copies, ctx.sizes, rates=("secant",))["secant"]
    want = robust_score(np.asarray(e).reshape(3, len(demos)), lam=2.0)
    by_source = {c.source: w for c, w in zip(cands, want)}
    assert score == pytest.approx([by_source[s] for s in order], abs=1e-6)
    assert score == sorted(score, reverse=True)
    with pytest.raises(ConfigError, match="perturbation 'popular'"):
        RD.ReaderRobustEffectSelector(perturbation="popular").validate()

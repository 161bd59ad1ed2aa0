"""The ranking-aligned Effect_D (our reconstruction): the rank loss on a hand case, its first-order
estimate against finite differences, its true gains against per-pair recomputation, the testbed users'
candidate sets and validation targets, and the ρ table's pooled / within-user split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from lrgd.demos import effect as fx
from lrgd.demos import effect_rank as fr
from lrgd.demos.effect import SlotPrompt
from lrgd.errors import ConfigError, ModelError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def llama3():
    from lrgd.llm import random_llama

    return random_llama(n_layers=3)


def _case(seed: int, n_cands: int = 6) -> tuple[SlotPrompt, torch.Tensor]:
    """A random single-token-target prompt whose candidate set (target at a random place) has ``n_cands``."""
    g = torch.Generator().manual_seed(seed)
    r = lambda n: torch.randint(0, 97, (n,), generator=g)  # noqa: E731
    cands = torch.randperm(97, generator=g)[:n_cands]
    target = cands[int(torch.randint(0, n_cands, (1,), generator=g))].reshape(1)
    return SlotPrompt(r(6), r(12), target, slot=10, candidates=cands), r(8)


def test_rank_loss_on_a_hand_case():
    """Candidate logits (1, 2, 3) with the target second: L = −2 + log(e + e² + e³); a shift of every
    candidate leaves it, a shift of the target alone moves it."""
    sp = SlotPrompt(torch.tensor([0]), torch.tensor([1]), torch.tensor([5]), 1, torch.tensor([7, 5, 2]))
    logits = torch.zeros(3, 9, dtype=torch.float64)
    logits[-2, [7, 5, 2]] = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    want = -2 + np.log(np.exp(1) + np.exp(2) + np.exp(3))
    assert float(fx.rank_loss(logits, sp)) == pytest.approx(want, abs=1e-12)
    shifted = logits.clone()
    shifted[-2, [7, 5, 2]] += 4.0
    assert float(fx.rank_loss(shifted, sp)) == pytest.approx(want, abs=1e-12)
    shifted[-2, 5] += 1.0
    assert float(fx.rank_loss(shifted, sp)) < want - 0.1
    assert fx.target_column(sp) == 1


def test_loss_with_demo_and_user_state_compute_the_rank_loss(llama3):
    """Both equal −log softmax of the candidates' logits at the answer position, read off a plain
    forward pass of the sequence (computed here without the module's helpers)."""
    sp, demo = _case(0)
    for d in (None, demo):
        ids, pos, _ = sp.layout(d)
        with torch.no_grad():
            z = llama3(input_ids=ids[None], position_ids=pos[None]).logits[0, -2, sp.candidates]
        want = float(-torch.log_softmax(z.double(), -1)[fx.target_column(sp)])
        assert fx.loss_with_demo(llama3, sp, d, loss="rank") == pytest.approx(want, abs=1e-10)
    assert fx.user_state(llama3, sp, loss="rank").loss == pytest.approx(
        fx.loss_with_demo(llama3, sp, None, loss="rank"), abs=1e-12
    )
    # the rank loss is not the NLL: a different gradient, so a different Effect_D
    ds = fx.demo_state(llama3, sp, demo)
    e_rank = fx.effect_d(ds, fx.user_state(llama3, sp, loss="rank"))
    assert abs(e_rank - fx.effect_d(ds, fx.user_state(llama3, sp))) > 1e-6


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rank_effect_matches_finite_differences(llama3, seed):
    """Identity (a check of the code): Effect_D(rank, derivative) = −dL_u^rank/dα at α = 0."""
    sp, demo = _case(seed)
    l0 = fx.loss_with_demo(llama3, sp, None, loss="rank")
    assert fx.loss_with_demo(llama3, sp, demo, alpha=0.0, loss="rank") == pytest.approx(l0, abs=1e-12)

    def slope(eps: float) -> float:
        return -(fx.loss_with_demo(llama3, sp, demo, alpha=eps, loss="rank") - l0) / eps

    fd = 2 * slope(0.01) - slope(0.02)  # Richardson, O(ε²), as tests/test_effect.py does for the NLL
    us = fx.user_state(llama3, sp, loss="rank")
    est = fx.effect_d(fx.demo_state(llama3, sp, demo), us, rate="derivative")
    assert est == pytest.approx(fd, rel=2e-3, abs=1e-5)
    batched = fx.effect_matrix([fx.demo_state(llama3, sp, demo)], [us], rate="derivative")
    assert float(batched[0, 0]) == pytest.approx(est, abs=1e-10)


def test_bad_rank_inputs_fail_clearly(llama3):
    sp, demo = _case(4)
    with pytest.raises(ModelError, match="needs the SlotPrompt's candidates"):
        fx.user_state(llama3, SlotPrompt(sp.prefix, sp.rest, sp.target, sp.slot), loss="rank")
    two = SlotPrompt(sp.prefix, sp.rest, torch.tensor([3, 4]), sp.slot, sp.candidates)
    with pytest.raises(ModelError, match="single-token target, got 2 tokens"):
        fx.loss_with_demo(llama3, two, demo, loss="rank")
    absent = int(next(t for t in range(97) if t not in sp.candidates.tolist()))
    with pytest.raises(ModelError, match=f"target token {absent} is not among the candidates"):
        fx.user_state(
            llama3, SlotPrompt(sp.prefix, sp.rest, torch.tensor([absent]), 10, sp.candidates), loss="rank"
        )
    dup = SlotPrompt(sp.prefix, sp.rest, sp.target, 10, torch.cat([sp.candidates, sp.target]))
    with pytest.raises(ModelError, match="distinct token ids"):
        fx.loss_with_demo(llama3, dup, None, loss="rank")
    with pytest.raises(ConfigError, match="unknown loss 'hinge'"):
        fx.user_state(llama3, sp, loss="hinge")
    assert fx.loss_with_demo(llama3, two, demo) > 0  # the NLL needs no candidates and takes any title


def test_slot_prompt_refuses_multi_token_candidates():
    from test_rank import tiny_tokenizer

    from lrgd.rec.prompts import prompt_parts

    tok = tiny_tokenizer()
    parts = prompt_parts(["Item 7 8"])
    sp = fx.slot_prompt(tok, parts, "11", False, slot=4, candidate_titles=["5", "11", "12"])
    assert sp.candidates.tolist() == [
        tok(" " + t, add_special_tokens=False)["input_ids"][0] for t in ["5", "11", "12"]
    ]
    assert fx.target_column(sp) == 1
    with pytest.raises(ModelError, match="candidate 'Item 5 6' is not a single token"):
        fx.slot_prompt(tok, parts, "11", False, slot=4, candidate_titles=["11", "Item 5 6"])
    assert fx.slot_prompt(tok, parts, "11", False, slot=4).candidates is None  # default unchanged


def test_true_outcomes_equal_per_pair_recomputation(llama3):
    """NLL and rank-loss drops against the per-pair true-gain path; rank and NDCG gains against ranks
    counted by hand from the candidate logits."""
    cases = [_case(s) for s in range(5, 8)]
    users = [SlotPrompt(cases[0][0].prefix, c.rest, c.target, 10, c.candidates) for c, _ in cases]
    demos = [d for _, d in cases]
    out = fr.true_outcomes(llama3, users, demos)
    assert set(out) == set(fr.GAINS) and all(v.shape == (3, 3) for v in out.values())
    np.testing.assert_allclose(out["NLL drop"], fx.true_gain_matrix(llama3, users, demos).numpy(), atol=1e-12)
    rank_drop = fx.true_gain_matrix(llama3, users, demos, loss="rank").numpy()
    np.testing.assert_allclose(out["rank-loss drop"], rank_drop, atol=1e-12)

    def rank(sp, d):
        ids, pos, _ = sp.layout(d)
        with torch.no_grad():
            z = llama3(input_ids=ids[None], position_ids=pos[None]).logits[0, -2, sp.candidates]
        return 1 + int((z > z[fx.target_column(sp)]).sum())

    for i, d in enumerate(demos):
        for j, u in enumerate(users):
            r0, r1 = rank(u, None), rank(u, d)
            assert out["rank gain"][i, j] == r0 - r1
            ndcg = lambda r: 1 / np.log2(r + 1) if r <= 10 else 0.0  # noqa: E731
            assert out["NDCG@10 gain"][i, j] == pytest.approx(ndcg(r1) - ndcg(r0), abs=1e-12)


def test_rho_table_separates_pooled_from_within_user():
    """An Effect_D that is the gain plus a per-user offset ranks every user's demonstrations perfectly
    (within ρ = 1) but not the pooled pairs; one that reverses the gain has within ρ = −1."""
    rng = np.random.default_rng(0)
    gain = rng.standard_normal((6, 8))
    offset = 5 * rng.standard_normal(8)[None]
    effects = {("test", "nll", "secant"): gain + offset, ("test", "nll", "derivative"): -gain}
    table = fr.rho_table(effects, {"NLL drop": gain}, n_boot=50)
    shifted = table.loc[("test", "nll", "secant", "NLL drop")]
    assert shifted["within ρ"] == pytest.approx(1.0) and shifted["pooled ρ"] < 0.9
    assert shifted["users (within)"] == 8
    assert table.loc[("test", "nll", "derivative", "NLL drop"), "within ρ"] == pytest.approx(-1.0)
    assert list(table.index.names) == ["signal", "loss", "rate", "gain"]
    from scipy.stats import spearmanr

    noisy = gain + rng.standard_normal(gain.shape)
    per = [spearmanr(noisy[:, j], gain[:, j]).statistic for j in range(8)]
    diff = fr.within_rho_difference(gain + offset, noisy, gain, n_boot=50)
    assert diff[0] == pytest.approx(1 - np.mean(per)) and diff[1] <= diff[0] <= diff[2]
    agree = fr.rate_agreement(effects)
    want = np.mean(np.sign(gain + offset) != np.sign(-gain))
    assert agree.loc[("test", "nll"), "opposite sign (share of pairs)"] == pytest.approx(want)


# ----------------------------------------------------------------------------- testbed B


@pytest.fixture(scope="module")
def testbed():
    from lrgd.config import get_profile
    from lrgd.testbeds import recworld as rw
    from lrgd.testbeds import tiny_decoder as td

    prof = get_profile("ci")
    world = rw.RecWorld.generate(prof.world, 0)
    return world, td.build_model(world.config, prof.decoder, 0).eval()


def test_testbed_users_carry_their_candidates(testbed):
    from lrgd.demos import testbed_effect as tbe
    from lrgd.testbeds.recworld import N_SPECIAL

    world, _ = testbed
    q = world.sample_queries(4, np.random.default_rng(1))
    sps = tbe.slot_prompts(q, 7, candidates=True)
    for i, sp in enumerate(sps):
        assert sp.candidates.tolist() == (q.candidates[i] + N_SPECIAL).tolist()
        assert fx.target_column(sp) == 0
    assert tbe.slot_prompts(q, 7)[0].candidates is None
    with pytest.raises(ConfigError, match="validation_queries"):
        tbe.slot_prompts(q, 7, validation=True, candidates=True)


def test_validation_queries_never_read_the_held_out_item(testbed):
    """Fallback (no ``Queries.valid``): the history's last item; with ``valid``: its first column. Either
    way a new held-out target leaves the validation users, and their candidates, unchanged."""
    from dataclasses import fields, replace

    from lrgd.demos import testbed_effect as tbe
    from lrgd.testbeds.recworld import Queries

    world, _ = testbed
    n_items, n_c = world.config.n_items, world.config.n_candidates
    q = world.sample_queries(30, np.random.default_rng(2))
    if "valid" in {f.name for f in fields(Queries)}:
        q = replace(q, valid=np.zeros((len(q), 0), dtype=np.int64))  # the fallback, with the new testbed
    v = tbe.validation_queries(world, q, seed=0)
    np.testing.assert_array_equal(v.target, q.history[:, -1])
    np.testing.assert_array_equal(v.history, q.history[:, :-1])
    assert v.candidates.shape == (30, n_c) and (v.candidates[:, 0] == v.target).all()
    assert all(len(set(row)) == n_c for row in v.candidates)
    moved = tbe.validation_queries(world, replace(q, target=(q.target + 1) % n_items), seed=0)
    np.testing.assert_array_equal(moved.candidates, v.candidates)

    @dataclass
    class WithValid(Queries):
        valid: np.ndarray | None = None

    valid = np.random.default_rng(3).integers(n_items, size=(30, 2))
    qv = WithValid(**{f.name: getattr(q, f.name) for f in fields(Queries) if f.name != "valid"}, valid=valid)
    w = tbe.validation_queries(world, qv, seed=0)
    np.testing.assert_array_equal(w.target, valid[:, 0])
    np.testing.assert_array_equal(w.history, q.history)
    assert (w.candidates[:, 0] == valid[:, 0]).all()


def test_effect_variants_reproduce_chapter_3_and_fill_every_cell(testbed):
    """Same seed → chapter 3's users and pool: the (test, nll, secant) variant is chapter 3's Effect_D
    and the NLL drop its true gain; every variant and gain is an [M, N] matrix."""
    from lrgd.demos import testbed_effect as tbe

    world, net = testbed
    v = tbe.effect_variants(net, world, 5, 4, seed=0)
    tb = tbe.testbed_pairs(net, world, 5, 4, 0)
    np.testing.assert_allclose(v.effects[("test", "nll", "secant")], tb.effect, atol=1e-12)
    np.testing.assert_allclose(v.gains["NLL drop"], tb.gain, atol=1e-12)
    assert len(v.effects) == 8 and all(m.shape == (4, 5) for m in v.effects.values())
    assert not np.allclose(v.effects[("test", "rank", "secant")], v.effects[("test", "nll", "secant")])
    assert not np.allclose(v.effects[("validation", "rank", "secant")], v.effects[("test", "rank", "secant")])
    assert v.valid_source in ("last history item", "validation next item")
    table = tbe.variants_table(v, n_boot=20)
    assert len(table) == 8 * 4 and table["pooled ρ"].between(-1, 1).all()

"""Effect_D (our reconstruction): the first-order estimate is the exact derivative of the user's loss
with respect to the weight given to the demonstration, and the cached O(M + N) path equals a
per-pair recomputation."""

from __future__ import annotations

import pytest
import torch

from lrgd.demos.effect import SlotPrompt, demo_state, effect_d, loss_with_demo, user_state
from lrgd.errors import ConfigError, ModelError


@pytest.fixture(scope="module")
def llama3():
    from lrgd.llm import random_llama

    return random_llama(n_layers=3)


def _case(seed: int, n_demo: int = 8) -> tuple[SlotPrompt, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    r = lambda n: torch.randint(0, 97, (n,), generator=g)  # noqa: E731
    return SlotPrompt(r(6), r(12), r(3), slot=10), r(n_demo)


def test_layout_keeps_user_positions():
    sp, demo = _case(0)
    ids0, pos0, s0 = sp.layout(None)
    ids1, pos1, s1 = sp.layout(demo)
    assert (s0, s1) == (6, 14) and len(ids1) == len(ids0) + 8
    assert torch.equal(pos0[s0:], pos1[s1:])  # history/target positions do not depend on D
    assert pos1[6:14].tolist() == list(range(8, 16))  # D right-aligned in the slot [6, 16)
    with pytest.raises(ModelError, match="exceeds the slot"):
        sp.layout(torch.arange(11))


def test_alpha_zero_is_zero_shot(llama3):
    sp, demo = _case(1)
    l0 = loss_with_demo(llama3, sp, None)
    assert loss_with_demo(llama3, sp, demo, alpha=0.0) == pytest.approx(l0, abs=1e-12)
    assert user_state(llama3, sp).loss == pytest.approx(l0, abs=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_first_order_matches_finite_differences(llama3, seed):
    """Effect_D(rate="derivative") = −dL_u/dα at α = 0 (Richardson-extrapolated differences)."""
    sp, demo = _case(seed)
    l0 = loss_with_demo(llama3, sp, None)

    def slope(eps: float) -> float:
        return -(loss_with_demo(llama3, sp, demo, alpha=eps) - l0) / eps

    fd = 2 * slope(0.01) - slope(0.02)  # O(ε²); RMSNorm's float32 upcast limits smaller ε
    est = effect_d(demo_state(llama3, sp, demo), user_state(llama3, sp), rate="derivative")
    assert est == pytest.approx(fd, rel=2e-3, abs=1e-5)


def test_cached_path_equals_per_pair_recomputation(llama3):
    """O(M + N): D's state does not depend on the user and the user's state not on D."""
    cases = [_case(s) for s in range(3)]
    demos = [c[1] for c in cases]
    users = [c[0] for c in cases]
    # every user shares the first user's prefix and slot (one instruction for all prompts)
    users = [SlotPrompt(users[0].prefix, u.rest, u.target, u.slot) for u in users]
    d_states = [demo_state(llama3, users[0], d) for d in demos]
    u_states = [user_state(llama3, u) for u in users]
    for i, d in enumerate(demos):
        for j, u in enumerate(users):
            brute = effect_d(demo_state(llama3, u, d), user_state(llama3, u))
            assert effect_d(d_states[i], u_states[j]) == pytest.approx(brute, abs=1e-12)


def test_positions_and_options(llama3):
    sp, demo = _case(4)
    ds = demo_state(llama3, sp, demo)
    for which, n in (("all", 14), ("target", 3), ("end", 1)):
        assert user_state(llama3, sp, positions=which).q[0].shape == (4, n, 8)
    us = user_state(llama3, sp)
    assert effect_d(ds, us, layers=[0, 1, 2]) == pytest.approx(effect_d(ds, us), abs=1e-15)
    assert effect_d(ds, us, layers=[0]) + effect_d(ds, us, layers=[1, 2]) == pytest.approx(effect_d(ds, us))
    assert isinstance(effect_d(ds, us, form="linear"), float)
    assert demo_state(llama3, sp, demo, at_slot=False).k[0].shape == ds.k[0].shape
    with pytest.raises(ConfigError, match="unknown form"):
        effect_d(ds, us, form="cubic")
    with pytest.raises(ConfigError, match="unknown positions"):
        user_state(llama3, sp, positions="middle")


def test_testbed_slot_prompt_with_demo_is_the_k1_prompt():
    import numpy as np

    from lrgd.config import get_profile
    from lrgd.demos import testbed_effect as tbe
    from lrgd.testbeds import recworld as rw

    wcfg = get_profile("ci").world
    world = rw.RecWorld.generate(wcfg, 0)
    rng = np.random.default_rng(0)
    q = world.sample_queries(5, rng)
    pool = tbe.demo_pool(world, 4, rng)
    width = wcfg.demo_history_len + 3
    sps, ids = tbe.slot_prompts(q, width), tbe.pool_tokens(pool)
    batch = rw.PromptBatch(q, tbe.select_demos(q, pool, np.full((5, 1), 2)))
    for i in range(5):
        seq, pos, _ = sps[i].layout(ids[2])
        assert torch.equal(seq[:-1], torch.as_tensor(batch.tokens()[i]))  # + the target token
        assert torch.equal(pos, torch.arange(len(seq)))  # the demo fills the slot exactly
    full = tbe.pool_for(q, pool)
    same = full.group == q.group[:, None]
    assert ((full.kind == rw.SAME) == same).all()
    assert ((full.kind == rw.CORRUPTED) == (full.group < 0)).all()


def test_cached_json_recomputes_on_new_config(tmp_path):
    from lrgd.results import cached_json

    calls = []

    def compute():
        calls.append(1)
        return {"x": len(calls)}

    a, hit_a = cached_json(tmp_path / "c.json", {"k": 1}, compute)
    b, hit_b = cached_json(tmp_path / "c.json", {"k": 1}, compute)
    c, hit_c = cached_json(tmp_path / "c.json", {"k": 2}, compute)
    assert (a, hit_a, b, hit_b, c, hit_c) == ({"x": 1}, False, {"x": 1}, True, {"x": 2}, False)


@pytest.mark.parametrize("options", [{}, {"rate": "derivative"}, {"form": "linear"}, {"layers": [1]}])
def test_batched_matrix_equals_pairwise(llama3, options):
    from lrgd.demos.effect import demo_states, effect_matrix, user_states

    users = [_case(s)[0] for s in range(3)]
    users = [SlotPrompt(users[0].prefix, u.rest, u.target, u.slot) for u in users]
    demos = [_case(s, n_demo=5 + s)[1] for s in range(4)]  # different lengths → padding
    ds, us = demo_states(llama3, users, demos), user_states(llama3, users)
    mat = effect_matrix(ds, us, **options)
    assert mat.shape == (4, 3)
    for i in range(4):
        for j in range(3):
            assert mat[i, j].item() == pytest.approx(effect_d(ds[i], us[j], **options), rel=1e-9, abs=1e-12)

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
    assert effect_d(ds, us, layers=[0]) + effect_d(ds, us, layers=[1, 2]) == pytest.approx(effect_d(ds, us))
    assert demo_state(llama3, sp, demo, at_slot=False).k[0].shape == ds.k[0].shape
    with pytest.raises(ConfigError, match="unknown form"):
        effect_d(ds, us, form="cubic")
    with pytest.raises(ConfigError, match="unknown positions"):
        user_state(llama3, sp, positions="middle")


def _written_out(model, sp: SlotPrompt, demo: torch.Tensor, layer: int, form: str) -> float:
    """−Σ_h Σ_p ⟨Δo, ∂L_u/∂o⟩ at one layer, Δo written out from chapter 1's definitions, head by head:
    softmax: attention over Z ∪ D minus attention over Z, that layer's keys and values held fixed (so
    η (Attn_D − Attn_Z) with the secant η); linear: ΔW_ICL q with ΔW_ICL = Σ_i v_i k_iᵀ."""
    from lrgd.demos.effect import _forward_kwargs
    from lrgd.dual.algebra import outer_sum
    from lrgd.llm import capture_attention

    ids, pos, start = sp.layout(None)
    with torch.no_grad(), capture_attention(model) as caps:
        model(**_forward_kwargs(model, ids, pos))
    z, d = caps[layer], demo_state(model, sp, demo)
    grad = user_state(model, sp).grad[layer]  # [H, P, d] at positions start … T − 2
    group = z.q.shape[0] // z.k.shape[0]
    total = 0.0
    for h in range(z.q.shape[0]):
        kd, vd = d.k[layer][h // group].double(), d.v[layer][h // group].double()
        for j, p in enumerate(range(start, len(ids) - 1)):
            q = z.q[h, p].double()
            if form == "linear":
                delta = outer_sum(kd, vd) @ q * z.scaling
            else:
                keys = torch.cat([z.k[h // group, : p + 1].double(), kd])
                vals = torch.cat([z.v[h // group, : p + 1].double(), vd])
                delta = torch.softmax(keys @ q * z.scaling, 0) @ vals - z.out[p, h].double()
            total -= float(delta @ grad[h, j])
    return total


@pytest.mark.parametrize("form", ["softmax", "linear"])
@pytest.mark.parametrize("layer", [0, 2])
def test_one_layer_equals_the_attention_change_written_out(llama3, form, layer):
    """``effect_d(layers=[l])`` against Δo computed head by head and position by position: catches a wrong
    η, partition sum, causal mask, scaling or query-to-KV-head mapping (GQA), and a ``layers`` argument
    that is ignored or off by one."""
    sp, demo = _case(5)
    got = effect_d(demo_state(llama3, sp, demo), user_state(llama3, sp), form=form, layers=[layer])
    assert got == pytest.approx(_written_out(llama3, sp, demo, layer, form), rel=1e-8, abs=1e-12)


# titles in the vocabulary of the tiny word-level tokenizer ("Item a b"), and of any real one
DEMO_HISTORY, DEMO_NEXT = ["Item 1 2", "Item 3 4"], "Item 5 6"
USER_HISTORY, TARGET = ["Item 7 8"], "Item 11 12"


@pytest.mark.parametrize("name", ["tiny", pytest.param("smollm2-135m", marks=pytest.mark.llm)])
def test_slot_prompt_plus_demo_tokens_is_build_prompt_with_one_demo(name):
    """Effect_D and the true gain are computed on ``prefix · demo_tokens(D) · rest``: that must be, token for
    token, the prompt chapter 2's builder makes with D as its one demonstration (same template, same
    tokenisation at the seams; SmolLM2 merges a blank line into one token when pieces are tokenised apart).
    """
    from test_rank import tiny_tokenizer

    from lrgd.demos.effect import demo_tokens, slot_prompt
    from lrgd.rec.prompts import Demonstration, build_prompt, prompt_parts

    if name == "tiny":
        tok, chat = tiny_tokenizer(), False
    else:
        from transformers import AutoTokenizer

        from lrgd.llm import model_folder

        tok, chat = AutoTokenizer.from_pretrained(model_folder(name)), True
    d = demo_tokens(tok, DEMO_HISTORY, DEMO_NEXT)
    sp = slot_prompt(tok, prompt_parts(USER_HISTORY), TARGET, chat, slot=len(d) + 3)
    ids, _, _ = sp.layout(d)
    one_demo = prompt_parts(USER_HISTORY, [Demonstration(tuple(DEMO_HISTORY), DEMO_NEXT)])
    assert ids[: len(ids) - len(sp.target)].tolist() == build_prompt(tok, one_demo, chat).input_ids.tolist()
    assert sp.target.tolist() == tok(TARGET if chat else " " + TARGET, add_special_tokens=False)["input_ids"]


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


# ----------------------------------------------------------------------------- chapter 3's study helpers


def _shop():
    """A hand-made catalogue: users u1, u2 are evaluated (valid/test targets: u1 T3/T4, u2 T8/T9); pool
    users a…e end their training sequences with the transitions below. Item 13 is a title twin of 9."""
    from pathlib import Path

    from lrgd.rec.data import Dataset, Item, leave_one_out

    items = {str(i): Item(str(i), f"T{i}") for i in range(1, 13)} | {"13": Item("13", "T9")}
    tail = ["1", "2"]  # every pool user's valid and test items (held out from their own training)
    seqs = {
        "u1": ["1", "2", "3", "4"],
        "u2": ["5", "6", "8", "9"],  # as a source: (T5) → T6, from an evaluated user
        "a": ["10", "11", "12", *tail],  # clean
        "b": ["10", "4", "11", *tail],  # shows u1's test item by id
        "c": ["13", "12", "10", *tail],  # shows T9, u2's test title, through the twin id 13
        "d": ["11", "10", "3", *tail],  # next item is u1's validation item
        "e": ["12", "11", "10", *tail],  # clean
    }
    ds = Dataset("shop", items, seqs, Path("."))
    return ds, leave_one_out(ds)


def test_shared_demonstrations_pass_the_guard_for_every_user():
    """Only a and e are clean for both users; a guard for the first user alone would also take c and u2."""
    import numpy as np

    from lrgd.demos.effect_study import shared_demonstrations
    from lrgd.errors import DataError

    ds, split = _shop()
    for seed in range(5):  # whatever the draw order
        sources, demos = shared_demonstrations(ds, split, ["u1", "u2"], 2, np.random.default_rng(seed), 2)
        assert {s for s, _ in sources} == {"a", "e"}
        assert {(d.history, d.next_item) for d in demos} == {(("T10", "T11"), "T12"), (("T12", "T11"), "T10")}
        with pytest.raises(DataError, match="only 2 leakage-free"):
            shared_demonstrations(ds, split, ["u1", "u2"], 3, np.random.default_rng(seed), 2)


def _pairs(tok, chat: bool, ds, split, demos, history: list[str]):
    """LLMPairs for u1 and u2 built by hand (no guard): each user's slot prompt and the demos' tokens."""
    from lrgd.demos import effect_study as es
    from lrgd.demos.effect import demo_tokens, slot_prompt
    from lrgd.rec.prompts import prompt_parts

    tokens = [demo_tokens(tok, d.history, d.next_item) for d in demos]
    slot = max(len(t) for t in tokens)
    users = ["u1", "u2"]
    prompts = [slot_prompt(tok, prompt_parts(history), ds.title(split.test[u][1]), chat, slot) for u in users]
    return es.LLMPairs(users, [("x", 1)] * len(demos), list(demos), tokens, prompts)


@pytest.mark.llm
def test_leaks_are_counted_in_the_prompts_as_built():
    """A demonstration that bypassed the guard is found in the decoded tokens, for the user it leaks to;
    a tokenizer whose decoding loses the template is an error, not a clean count."""
    from test_rank import tiny_tokenizer
    from transformers import AutoTokenizer

    from lrgd.demos.effect_study import leaks_as_built
    from lrgd.llm import model_folder
    from lrgd.rec.prompts import Demonstration

    ds, split = _shop()
    tok = AutoTokenizer.from_pretrained(model_folder("smollm2-135m"))
    demos = [Demonstration(("T10", "T11"), "T12"), Demonstration(("T1", "T4"), "T12")]  # the 2nd shows T4
    assert leaks_as_built(_pairs(tok, True, ds, split, demos, ["T2"]), tok, ds, split) == 1  # (2nd, u1) only
    word_level = tiny_tokenizer()  # its decode drops the newlines of the template
    demos = [Demonstration(("Item 1 2",), "Item 3 4")]
    with pytest.raises(ModelError, match="cannot read the demonstration back"):
        leaks_as_built(_pairs(word_level, False, ds, split, demos, ["Item 5 6"]), word_level, ds, split)


def test_correlation_table_pooled_and_within_user():
    """Within each user the ranking is perfect, pooled it is not (users differ in scale): hand-computed."""
    import numpy as np

    from lrgd.demos.effect_report import correlation_table

    a = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])  # [M=3 demonstrations, N=2 users]
    b = np.array([[3.0, 1.0], [4.0, 2.0], [5.0, 3.5]])
    row = correlation_table({"x": (a, b)}, n_boot=50).loc["x"]
    # pooled ranks: a → 1 2 3 4 5 6 (user 1 first), b → 3 5 6 1 2 4 (interleaved); ρ = 1 − 6·Σd²/(n(n²−1))
    d2 = sum((x - y) ** 2 for x, y in zip([1, 4, 2, 5, 3, 6], [3, 1, 5, 2, 6, 4]))
    assert row["Spearman ρ"] == pytest.approx(1 - 6 * d2 / (6 * 35))
    assert row["within-user ρ"] == pytest.approx(1.0)


def test_readings_follow_the_numbers():
    """The sentence says what the interval says: positive, none, or negative; ablations sorted by it."""
    import numpy as np
    import pandas as pd

    from lrgd.demos.effect_report import llm_reading

    columns = ("Spearman ρ", "CI low", "CI high", "within-user ρ", "w. CI low", "w. CI high")

    def table(lo: float, hi: float) -> pd.DataFrame:
        rows = {"Effect_D": (0.3, lo, hi), "linear dual": (-0.5, -0.8, -0.1), "no RoPE": (0.3, 0.0, 0.6)}
        return pd.DataFrame({n: dict(zip(columns, 2 * r)) for n, r in rows.items()}).T

    gain = np.array([[1.0, -1.0], [-2.0, -3.0]])  # 25% of pairs help
    assert "is positive within a user" in llm_reading(table(0.1, 0.5), gain, gain)
    assert "is not distinguishable from zero within a user" in llm_reading(table(-0.1, 0.5), gain, gain)
    assert "is negative within a user" in llm_reading(table(-0.5, -0.1), gain, gain)
    mixed = table(0.1, 0.5)
    mixed.loc["Effect_D", "CI low"] = -0.2  # the pooled interval spans zero, the within-user one does not
    text = llm_reading(mixed, gain, gain)
    assert "positive within a user" in text and "not distinguishable from zero over all pairs" in text
    assert "raise* the loss (25% of the 4 pairs help)" in text
    assert "linear dual rank clearly worse" in text and "no RoPE cannot be told apart" in text


def test_testbed_legal_selectors_never_read_the_held_out_item():
    """Changing every query's held-out target leaves the legal selectors' choices (and the validation-step
    Effect_D) unchanged; only the peeking selector may move."""
    from dataclasses import replace

    import numpy as np

    from lrgd.config import get_profile
    from lrgd.demos import testbed_effect as tbe
    from lrgd.testbeds import recworld as rw
    from lrgd.testbeds import tiny_decoder as td

    prof = get_profile("ci")
    world = rw.RecWorld.generate(prof.world, 0)
    net = td.build_model(world.config, prof.decoder, 0).eval()
    tb = tbe.testbed_pairs(net, world, 6, 5, 0)
    assert tb.effect.shape == tb.gain.shape == tb.usefulness.shape == tb.kind.shape == (5, 6)
    choices, val_self = tbe.selection_choices(net, world, tb, k=2)
    q = tb.queries
    moved = replace(q, target=(q.target + 1) % world.config.n_items)
    choices2, val_self2 = tbe.selection_choices(net, world, replace(tb, queries=moved), k=2)
    np.testing.assert_array_equal(val_self, val_self2)
    for name in ("random", "Effect_D global", "Effect_D per user (validation step)"):
        np.testing.assert_array_equal(choices[name], choices2[name])
    np.testing.assert_array_equal(
        choices["Effect_D on the held-out item (peeks)"], np.argsort(-tb.effect, 0)[:2].T
    )

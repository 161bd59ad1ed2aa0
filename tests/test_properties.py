"""Property-based tests (Hypothesis) of the metrics, the prompt spans and the dual split (issue 12).

Each property is checked on at most 50 generated cases, the same on every run (derandomized):

* metrics: every HR/NDCG/MRR value lies in [0, 1], NDCG@k ≤ HR@k and HR@k grows with k; the target's
  rank is the same whatever order the candidates are listed in (the tie rule of :mod:`lrgd.metrics`
  keys ties by (seed, user, item), never by position), equals its place in the list sorted by
  (−score, key), and the vectorised ranks agree; the paired test's p lies in (0, 1];
* prompts: the spans of :func:`lrgd.rec.prompts.build_prompt` tile the prompt's content tokens in part
  order, without overlap or gap;
* dual split (chapter 1): for random shapes and random Z/D splits, ZSL part + ICL part = full linear
  attention, one GD step on the dual loss = W_ZSL + ΔW_ICL, and the softmax split recombines to softmax
  attention with a share in [0, 1].
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_rank import _WORDS, tiny_tokenizer

from lrgd import metrics
from lrgd.dual.algebra import gd_step, linear_attention, linear_dual, outer_sum, softmax_split
from lrgd.rec.prompts import Demonstration, build_prompt, prompt_parts

#: ≤ 50 cases, no deadline; derandomized (the same cases on every run, so a failure reproduces) and no
#: example database (nothing written into the checkout)
FAST = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# ----------------------------------------------------------------------------- metrics


@FAST
@given(rank=st.integers(1, 10_000))
def test_metric_bounds(rank: int) -> None:
    m = metrics.rank_metrics(rank)
    assert all(0.0 <= v <= 1.0 for v in m.values()), m
    for k in (5, 10):
        assert m[f"NDCG@{k}"] <= m[f"HR@{k}"]
    assert m["HR@1"] <= m["HR@5"] <= m["HR@10"] and m["NDCG@5"] <= m["NDCG@10"]
    assert m["MRR"] == 1.0 / rank and (m["HR@1"] == 1.0) == (rank == 1)


@st.composite
def candidates(draw):
    """(scores [C] with many ties, distinct item ids [C], target index, user, seed)."""
    c = draw(st.integers(2, 30))
    scores = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, -2.0, float("nan")]), min_size=c, max_size=c))
    items = draw(st.lists(st.text("abcdef0123", min_size=1, max_size=5), min_size=c, max_size=c, unique=True))
    target = draw(st.integers(0, c - 1))
    return scores, items, target, draw(st.text(max_size=6)), draw(st.integers(0, 2**31))


@FAST
@given(case=candidates(), data=st.data())
def test_rank_is_invariant_to_candidate_order(case, data) -> None:
    scores, items, target, user, seed = case
    keys = [metrics.tie_key(i, user, seed) for i in items]
    rank = metrics.rank_of_target(scores, target, keys)
    assert 1 <= rank <= len(scores)
    perm = data.draw(st.permutations(range(len(scores))))
    shuffled = [scores[j] for j in perm]
    assert metrics.rank_of_target(shuffled, perm.index(target), [keys[j] for j in perm]) == rank
    finite = [-np.inf if np.isnan(s) else s for s in scores]  # NaN ranks last
    order = sorted(range(len(scores)), key=lambda j: (-finite[j], keys[j]))
    assert order.index(target) + 1 == rank
    # the vectorised form with the same keys (target in column 0) gives the same rank
    cols = [target, *(j for j in range(len(scores)) if j != target)]
    row = np.array([[scores[j] for j in cols]])
    key_row = np.array([[float(keys[j]) for j in cols]])
    assert metrics.ranks_of_targets(row, 0, keys=key_row).tolist() == [rank]


@FAST
@given(
    d=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=40),
    n_perm=st.sampled_from([99, 999]),
    seed=st.integers(0, 1000),
)
def test_paired_test_p_in_unit_interval(d, n_perm, seed) -> None:
    a = np.asarray(d)
    out = metrics.paired_bootstrap(a, np.zeros_like(a), n_boot=200, seed=seed, n_perm=n_perm)
    assert 0.0 < out["p"] <= 1.0 and out["lo"] <= out["hi"]
    assert metrics.format_p(out["p"], n_perm) != "0.000"


# ----------------------------------------------------------------------------- prompt spans

TITLE_WORDS = [w for w in _WORDS if w.isalnum()]
titles = st.lists(st.sampled_from(TITLE_WORDS), min_size=1, max_size=4).map(" ".join)


@FAST
@given(
    history=st.lists(titles, min_size=1, max_size=6),
    demos=st.lists(st.tuples(st.lists(titles, min_size=1, max_size=3), titles), max_size=4),
    listed=st.one_of(st.none(), st.lists(titles, min_size=1, max_size=5)),
)
def test_spans_tile_the_prompt(history, demos, listed) -> None:
    tok = tiny_tokenizer()
    parts = prompt_parts(history, [Demonstration(tuple(h), n) for h, n in demos], listed)
    p = build_prompt(tok, parts, chat=False)
    spans = [p.spans[name] for name, _ in parts]
    assert list(p.spans) == [name for name, _ in parts]  # one span per part, in order
    assert spans[0][0] == 0 and spans[-1][1] == len(p.input_ids)  # no special tokens here
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start  # consecutive: no gap, no overlap
    assert all(a < b for a, b in spans)
    assert int(p.mask("").sum()) == sum(b - a for a, b in spans) == len(p.input_ids)
    assert int(p.demo_mask.sum()) == sum(b - a for n, (a, b) in p.spans.items() if n.startswith("demo"))


@pytest.mark.llm
@settings(FAST, max_examples=30)
@given(
    history=st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=4),
    demo=st.lists(st.text(min_size=1, max_size=12).filter(str.strip), min_size=1, max_size=3),
    chat=st.booleans(),
)
def test_spans_tile_a_subword_prompt(smollm2, history, demo, chat) -> None:
    """With SmolLM2's BPE and any text (a token may straddle two parts; it belongs to the part of its
    first character), the spans still tile the content tokens; the template's tokens belong to none."""
    tok = smollm2.tokenizer
    parts = prompt_parts(history, [Demonstration(tuple(demo), demo[0])])
    p = build_prompt(tok, parts, chat=chat)
    spans = [p.spans[name] for name, _ in parts]
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end == start
    assert all(a < b for a, b in spans)
    if not chat:
        assert spans[-1][1] == len(p.input_ids)
    content = "".join(t for _, t in parts)
    offset = p.text.index(content)
    enc = tok(p.text, return_offsets_mapping=True, add_special_tokens=not chat)["offset_mapping"]
    inside = [j for j, (a, b) in enumerate(enc) if b > a and offset <= a < offset + len(content)]
    assert (spans[0][0], spans[-1][1]) == (inside[0], inside[-1] + 1)


# ----------------------------------------------------------------------------- dual split


@st.composite
def attention_case(draw):
    """Random (q [d], k [N, d], v [N, dv], demo [N] bool) in float64, any split including empty parts."""
    n, d, dv = draw(st.integers(1, 12)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    demo = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((d,), (n, d), (n, dv)))
    return q, k, v, demo


@FAST
@given(case=attention_case())
def test_linear_dual_split_sums_to_full_attention(case) -> None:
    q, k, v, demo = case
    dual = linear_dual(k, v, demo)
    full = linear_attention(q, k, v)
    torch.testing.assert_close(dual.w_zsl @ q + dual.delta_w_icl @ q, full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dual(q), full, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(dual.w_zsl + dual.delta_w_icl, outer_sum(k, v), rtol=1e-10, atol=1e-10)
    step = gd_step(dual.w_zsl, k[demo], v[demo])  # one GD step on the demonstrations, η = 1
    torch.testing.assert_close(step, dual.w_zsl + dual.delta_w_icl, rtol=1e-10, atol=1e-10)


@FAST
@given(case=attention_case(), scaling=st.one_of(st.none(), st.floats(0.01, 2.0)))
def test_softmax_split_recombines(case, scaling) -> None:
    q, k, v, demo = case
    s = softmax_split(q, k, v, demo, scaling)
    eta = float(s.share)
    assert 0.0 <= eta <= 1.0
    assert (eta == 0.0) == (not bool(demo.any())) and (eta == 1.0) == bool(demo.all())
    torch.testing.assert_close(s.combined(), s.out, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(s.out_z + s.update, s.out, rtol=1e-9, atol=1e-12)

"""Tests of the prompt builder: token spans, the context-window policy, the null and ranking prompts."""

from __future__ import annotations

import numpy as np
import pytest
from test_rank import tiny_tokenizer

from lrgd.errors import DataError, ModelError
from lrgd.rec.data import leave_one_out, make_synthetic
from lrgd.rec.prompts import (
    Demonstration,
    build_prompt,
    fit_prompt,
    generate_prompt_parts,
    null_prompt_parts,
    prompt_parts,
    random_demonstrations,
)

DEMOS = [Demonstration(("Item 1 2", "Item 3 4"), "Item 5 6"), Demonstration(("Item 7 8",), "Item 9 10")]
HISTORY = [f"Item {i} {i + 1}" for i in range(10, 30, 2)]  # 10 titles


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_spans_cover_their_parts(tok) -> None:
    parts = prompt_parts(HISTORY, DEMOS, candidates=["Item 40 41", "Item 42 43"])
    p = build_prompt(tok, parts, chat=False)
    names = [n for n, _ in parts]
    assert list(p.spans) == names == ["instruction", "demo0", "demo1", "history", "candidates", "answer"]
    ends = 0
    for name, text in parts:
        a, b = p.spans[name]
        assert ends <= a < b  # ordered, non-overlapping
        ends = b
        decoded = tok.decode(p.input_ids[a:b]).replace(" ", "")
        assert decoded == text.replace(" ", "").replace("\n", "")  # word-level: every word is a token
    assert int(p.demo_mask.sum()) == sum(b - a for n, (a, b) in p.spans.items() if n.startswith("demo"))


@pytest.mark.llm
def test_spans_with_the_chat_template() -> None:
    from transformers import AutoTokenizer

    from lrgd.llm import model_folder

    chat_tok = AutoTokenizer.from_pretrained(model_folder("smollm2-135m"))
    parts = prompt_parts(["Halo 4", "Gears of War 4"], DEMOS)
    p = build_prompt(chat_tok, parts, chat=True)
    for name, text in parts:
        a, b = p.spans[name]
        assert chat_tok.decode(p.input_ids[a:b]).strip() == text.strip()
    assert p.text.endswith("<|im_start|>assistant\n")


def test_fit_prompt_drops_oldest_history_then_demos(tok) -> None:
    full = build_prompt(tok, prompt_parts(HISTORY, DEMOS), chat=False)
    n = len(full.input_ids)
    p, t = fit_prompt(tok, HISTORY, DEMOS, chat=False, max_tokens=n)
    assert not t.truncated and len(p.input_ids) == n
    per_item = 4  # "Item a b" + ";" in this word-level tokenizer
    p, t = fit_prompt(tok, HISTORY, DEMOS, chat=False, max_tokens=n - 2 * per_item)
    assert (t.history_dropped, t.demos_dropped) == (2, 0)
    assert HISTORY[2] in p.text and HISTORY[1] not in p.text  # the oldest went first
    # with one history item left, demonstrations go, the last one first
    one = build_prompt(tok, prompt_parts(HISTORY[-1:], DEMOS[:1]), chat=False)
    p, t = fit_prompt(tok, HISTORY, DEMOS, chat=False, max_tokens=len(one.input_ids) + 5, reserve=5)
    assert (t.history_dropped, t.demos_dropped) == (9, 1)
    assert "Example 1" in p.text and "Example 2" not in p.text
    with pytest.raises(ModelError, match="one history item and no demonstrations"):
        fit_prompt(tok, HISTORY, DEMOS, chat=False, max_tokens=10)
    with pytest.raises(DataError, match="empty history"):
        fit_prompt(tok, [], DEMOS, chat=False, max_tokens=1000)


def test_null_and_generate_prompts(tok) -> None:
    null = build_prompt(tok, null_prompt_parts(), chat=False)
    assert list(null.spans) == ["instruction", "answer"] and null.text.endswith("Next:")
    gen = generate_prompt_parts(HISTORY, DEMOS, ["Item 40 41"])
    assert [n for n, _ in gen][-2:] == ["candidates", "answer"] and gen[-1][1].endswith("Ranking:")
    assert gen[0][1].startswith("You are a recommender system") and "one per line" in gen[0][1]


def test_build_prompt_reports_the_window(tok) -> None:
    with pytest.raises(ModelError, match="context window of 5"):
        build_prompt(tok, prompt_parts(HISTORY), chat=False, max_tokens=5)


def test_random_demonstrations_never_leak() -> None:
    ds = make_synthetic(n_users=60, n_items=30, seed=3, min_len=4, max_len=8)
    split = leave_one_out(ds)
    for user in list(split.test)[:20]:
        held = {ds.items[split.valid[user][1]].title, ds.items[split.test[user][1]].title}
        demos = random_demonstrations(ds, split, user, 3, np.random.default_rng(0))
        for d in demos:
            assert not held & {*d.history, d.next_item}


def test_random_demonstrations_refuse_title_twins() -> None:
    """On the hand-built twin dataset 3 of 10 sources leak for each user (own, id, title twin): exactly
    the other 7 can be drawn, and asking for 8 fails."""
    from test_select import leaky_by_hand, twin_dataset

    ds = twin_dataset()
    split = leave_one_out(ds)
    for user in split.test:
        demos = random_demonstrations(ds, split, user, 7, np.random.default_rng(1), history_len=4)
        clean = {f"u{j}" for j in range(10)} - leaky_by_hand(user)
        expected = {ds.items[split.train[s][-1]].title for s in clean}  # each source's next item, by hand
        assert {d.next_item for d in demos} == expected
        with pytest.raises(DataError, match="leakage-free"):
            random_demonstrations(ds, split, user, 8, np.random.default_rng(1), history_len=4)

"""Tests of lrgd.rec.rank: cached scoring equals one full forward per candidate; ranking; parsing.

``tiny_model_folder`` (also used by test_cli/test_evaluate) saves a randomly initialised 2-layer Llama
with a word-level tokenizer into a folder that :func:`lrgd.llm.load_model` loads like any HF model.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lrgd.errors import ConfigError, ModelError
from lrgd.rec import rank
from lrgd.rec.prompts import INSTRUCTION, RANK_INSTRUCTION

# ----------------------------------------------------------------------------- a tiny model

_WORDS = sorted(
    set(re.findall(r"\w+|[^\w\s]", INSTRUCTION + " " + RANK_INSTRUCTION))
    | {"Example", "Bought", "Next", "Now", "this", "user", "Candidates", "Ranking", "Item"}
    | {".", ":", ";", ",", "-"}
    | {str(i) for i in range(1000)}
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[UNK]", "[PAD]", "<s>", "</s>", *_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", bos_token="<s>", eos_token="</s>"
    )


def tiny_model(vocab_size: int, seed: int = 0, max_positions: int = 512):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        pad_token_id=1,
        bos_token_id=2,
        eos_token_id=3,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the default init, so rankings are not near-ties
        model.lm_head.weight.mul_(20)
    return model


def tiny_model_folder(folder: Path) -> Path:
    """Save the tiny model and tokenizer once into ``folder`` (idempotent)."""
    if not (folder / "config.json").is_file():
        tok = tiny_tokenizer()
        model = tiny_model(len(tok))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(vocab_size=97)


def random_case(seed: int, n_prompt: int = 23, n_cand: int = 9, vocab: int = 97):
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(4, vocab, (n_prompt,), generator=g)
    lengths = torch.randint(1, 7, (n_cand,), generator=g).tolist()
    conts = [torch.randint(4, vocab, (n,), generator=g).tolist() for n in lengths]
    return prompt, conts


# ----------------------------------------------------------------------------- cached = naive


@pytest.mark.parametrize("mode", rank.SCORING_MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cached_scoring_equals_full_forward(tiny, mode: str, seed: int) -> None:
    prompt, conts = random_case(seed)
    naive = rank.score_naive(tiny, prompt, conts)
    cached = rank.score_continuations(tiny, prompt, conts, mode=mode)
    np.testing.assert_allclose(cached.summed, naive.summed, atol=1e-4)
    assert cached.n_tokens.tolist() == [len(c) for c in conts]
    np.testing.assert_allclose(cached.mean, naive.summed / naive.n_tokens, atol=1e-4)


def test_grouping_and_single_token_titles(tiny) -> None:
    """Candidates split across several forwards (the cache cropped back in between) give the same
    scores; one-token titles are scored from the prompt's last logits alone."""
    prompt, conts = random_case(5, n_cand=12)
    conts[0], conts[3] = [7], [9]
    whole = rank.score_continuations(tiny, prompt, conts)
    pieces = rank.score_continuations(tiny, prompt, conts, max_new_tokens=4)
    np.testing.assert_allclose(pieces.summed, whole.summed, atol=1e-5)
    per = rank.score_continuations(tiny, prompt, conts, per_token=True)
    assert [len(p) for p in per] == [len(c) for c in conts]
    np.testing.assert_allclose(rank.score_naive(tiny, prompt, conts).summed, whole.summed, atol=1e-4)


def test_scoring_errors(tiny) -> None:
    prompt, conts = random_case(0)
    with pytest.raises(ConfigError, match="unknown scoring mode"):
        rank.score_continuations(tiny, prompt, conts, mode="fast")
    with pytest.raises(ModelError, match="at least one token"):
        rank.score_continuations(tiny, prompt, [[5], []])
    long_prompt = torch.randint(4, 97, (510,))
    with pytest.raises(ModelError, match="context window of 512"):
        rank.score_continuations(tiny, long_prompt, [[5, 6, 7]])


# ----------------------------------------------------------------------------- ranking


def test_rank_order_ties_are_deterministic_and_order_free() -> None:
    items = ["a", "b", "c", "d"]
    scores = [1.0, 2.0, 1.0, float("nan")]
    order = rank.rank_order(scores, items, "u1", 0)
    assert order[0] == 1 and order[-1] == 3  # best first, NaN last
    tied = [items[j] for j in order[1:3]]
    assert sorted(tied) == ["a", "c"]
    # listing the candidates in another order changes nothing
    rev = rank.rank_order(scores[::-1], items[::-1], "u1", 0)
    assert [items[::-1][j] for j in rev] == [items[j] for j in order]
    assert rank.target_rank(scores, items, "b", "u1", 0) == 1
    assert rank.target_rank(scores, items, "d", "u1", 0) == 4


def test_tie_break_is_not_biased() -> None:
    """All-equal scores put the target at every rank about equally often over users."""
    items = [str(i) for i in range(20)]
    ranks = [rank.target_rank([0.0] * 20, items, "7", f"user{u}", 0) for u in range(2000)]
    assert 9.5 < np.mean(ranks) < 11.5


def test_variant_scores() -> None:
    v = rank.variant_scores(np.array([-4.0, -9.0]), np.array([2, 3]), np.array([-5.0, -6.0]))
    np.testing.assert_allclose(v["summed"], [-4, -9])
    np.testing.assert_allclose(v["mean"], [-2, -3])
    np.testing.assert_allclose(v["pmi"], [1, -3])
    assert "pmi" not in rank.variant_scores(np.array([-1.0]), np.array([1]), None)


# ----------------------------------------------------------------------------- generate and parse


def test_parse_ranked_list() -> None:
    titles = ["Super Mario Odyssey", "The Legend of Zelda: Breath of the Wild", "Halo 5", "FIFA 18"]
    text = "1. Zelda Breath of the Wild\n2) Halo 5.\n- super mario odyssey\n4. Halo 5\nsomething else"
    assert rank.parse_ranked_list(text, titles) == [1, 2, 0]
    assert rank.parse_ranked_list("I cannot answer that.", titles) == []
    assert rank.parse_ranked_list("FIFA 18; Halo 5", titles) == [3, 2]


# ----------------------------------------------------------------------------- the real model


@pytest.mark.llm
def test_real_smollm2_cached_equals_naive_and_tokenisation() -> None:
    from lrgd.llm import load_model
    from lrgd.rec.prompts import build_prompt, prompt_parts

    lm = load_model("smollm2-135m", "cpu")
    titles = ["Halo 5: Guardians", "Mario Kart 8 Deluxe", "FIFA 18 - PlayStation 4", "Tetris"]
    prompt = build_prompt(lm.tokenizer, prompt_parts(["Halo 4", "Gears of War 4"]), chat=lm.info.chat)
    sep = rank.continuation_sep(lm.info.chat)
    conts = rank.continuation_ids(lm.tokenizer, titles, sep)
    ids = prompt.input_ids.tolist()
    assert all(
        rank.joint_tokenisation_matches(lm.tokenizer, prompt.text, ids, c, sep, t)
        for c, t in zip(conts, titles)
    )
    naive = rank.score_naive(lm.model, prompt.input_ids, conts)
    for mode in rank.SCORING_MODES:
        cached = rank.score_continuations(lm.model, prompt.input_ids, conts, mode=mode)
        assert np.abs(cached.summed - naive.summed).max() < 2e-3
        assert np.array_equal(np.argsort(-cached.summed), np.argsort(-naive.summed))

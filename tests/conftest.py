"""Shared fixtures: a tiny random Llama (fast, no download) and the real SmolLM2 (converted once, cached)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer Llama with GQA (4 query heads, 2 KV heads) and random weights, in float64."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        attn_implementation="sdpa",
    )
    model = LlamaForCausalLM(cfg).to(torch.float64).eval()
    return model


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct; skipped with a reason when its package is not installed."""
    from lrgd.errors import ModelError
    from lrgd.llm import load_model

    try:
        return load_model("smollm2-135m", device="cpu")
    except ModelError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"SmolLM2 unavailable: {exc}")

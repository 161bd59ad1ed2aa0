"""Shared fixtures: a tiny random Llama (fast, no download) and the real SmolLM2 (converted once, cached)."""

from __future__ import annotations

import pytest


@pytest.fixture
def one_thread():
    """torch on one thread, restored afterwards: the test models are tiny and two threads crawl on a shared
    2-core machine. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_llama():
    """A 2-layer Llama with GQA (4 query heads, 2 KV heads) and random weights, in float64."""
    from lrgd.llm import random_llama

    return random_llama(n_layers=2)


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct; skipped with a reason when its package is not installed."""
    from lrgd.errors import ModelError
    from lrgd.llm import load_model

    try:
        return load_model("smollm2-135m", device="cpu")
    except ModelError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"SmolLM2 unavailable: {exc}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny local Hugging Face model folder (config, weights, tokenizer): a model given by its path."""
    from test_rank import tiny_model_folder

    return tiny_model_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """A data folder with one small synthetic dataset under the name ``amazon-games``."""
    from lrgd.rec.data import make_synthetic, write_synthetic

    root = tmp_path_factory.mktemp("data")
    ds = make_synthetic(n_users=40, n_items=60, seed=1, min_len=4, max_len=9)
    write_synthetic(ds, root / "amazon-games", "amazon-games")
    return root

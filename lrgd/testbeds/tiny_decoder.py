"""A tiny RoPE decoder (a real ``LlamaForCausalLM`` of small width) trained from scratch on testbed B.

The model is built from ``transformers``' ``LlamaConfig`` — the same code path as SmolLM2 (RMSNorm,
SwiGLU MLP, rotary embeddings, grouped-query attention) — so :func:`lrgd.llm.forward_captured` and the
chapter-1 dual rebuild apply to it unchanged. Vocabulary: the special tokens of :mod:`lrgd.testbeds.recworld`
followed by one token per item.

Training (our choice): next-token cross-entropy on every *item* token of prompts drawn from the world
with ``k ~ U{0..k_max}`` demonstrations whose kinds follow the world's training prior. Candidates are
scored by the logits at the final (``->``) position.

Trained weights are cached under ``cache_dir()/testbeds`` by a hash of everything that shapes them:
the world's configuration and seed, the training sizes, the seed, and the source of
:data:`TRAINING_MODULES` (:func:`lrgd.results.code_hash`). A second execution of the book never
retrains; an edit to the training code or the world does.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lrgd.config import DecoderSizes, WorldConfig, cache_dir
from lrgd.errors import ModelError
from lrgd.progress import progress
from lrgd.results import code_hash, content_key, save_torch
from lrgd.testbeds.recworld import N_SPECIAL, PromptBatch, Queries, RecWorld

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto inside a kernel without widgets

#: the modules whose source shapes the trained weights (the model and its training loop; the world
#: that samples the training prompts): their :func:`~lrgd.results.code_hash` is part of the cache key
TRAINING_MODULES = ("lrgd.testbeds.tiny_decoder", "lrgd.testbeds.recworld")

EVAL_FIELDS = ("eval_queries", "dual_prompts")  # sizes of the evaluation, not of the weights


def build_model(world: WorldConfig, preset: DecoderSizes, seed: int = 0) -> torch.nn.Module:
    """A freshly initialised ``LlamaForCausalLM`` (sdpa attention, tied embeddings) for ``world``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=world.vocab_size,
        hidden_size=preset.hidden,
        intermediate_size=preset.intermediate,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        max_position_embeddings=max(64, world.seq_len(world.k_max)),
        rope_parameters={"rope_theta": preset.rope_theta, "rope_type": "default"},
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=None,
        use_cache=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.set_attn_implementation("sdpa")
    return model


def item_labels(tokens: torch.Tensor) -> torch.Tensor:
    """Next-token labels that keep only item tokens (specials → −100, ignored by the loss)."""
    labels = tokens[:, 1:].clone()
    labels[labels < N_SPECIAL] = -100
    return labels


def _lr(step: int, preset: DecoderSizes) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < preset.warmup:
        return preset.lr * (step + 1) / preset.warmup
    frac = (step - preset.warmup) / max(1, preset.steps - preset.warmup)
    return preset.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


def train(
    model: torch.nn.Module, world: RecWorld, preset: DecoderSizes, seed: int = 0, desc: str = "train"
) -> dict:
    """Train ``model`` in place; returns a log (loss curve every 50 steps, seconds, steps)."""
    rng = np.random.default_rng([seed, 7])
    dev = next(model.parameters()).device
    opt = torch.optim.AdamW(
        model.parameters(), lr=preset.lr, weight_decay=preset.weight_decay, betas=(0.9, 0.98)
    )
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(preset.threads)
    curve, window = [], []
    t0 = time.perf_counter()
    try:
        for step in progress(range(preset.steps), desc, total=preset.steps):
            k = int(rng.integers(world.config.k_max + 1))
            tokens = torch.from_numpy(world.sample_prompts(preset.batch, k, rng, "mixed").tokens()).to(dev)
            logits = model(input_ids=tokens).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), item_labels(tokens).reshape(-1), ignore_index=-100
            )
            for group in opt.param_groups:
                group["lr"] = _lr(step, preset)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            window.append(loss.item())
            if (step + 1) % 50 == 0:
                curve.append((step + 1, float(np.mean(window))))
                window = []
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return {"curve": curve, "seconds": time.perf_counter() - t0, "steps": preset.steps}


# ----------------------------------------------------------------------------- weight cache


def key_parts(world: RecWorld, preset: DecoderSizes, seed: int) -> dict:
    """Everything that shapes the trained weights: the world's configuration and seed, the decoder's
    sizes and schedule (not its evaluation sizes, :data:`EVAL_FIELDS`), the seed, and the code."""
    return {
        "world": asdict(world.config),
        "world_seed": world.seed,
        "preset": {k: v for k, v in asdict(preset).items() if k not in EVAL_FIELDS},
        "seed": seed,
        "code": code_hash(*TRAINING_MODULES),
    }


def _key(world: RecWorld, preset: DecoderSizes, seed: int) -> str:
    return content_key(key_parts(world, preset, seed))


def weights_path(world: RecWorld, preset: DecoderSizes, seed: int = 0) -> Path:
    """Where the trained weights of this configuration are (or will be) cached."""
    return cache_dir() / "testbeds" / f"recworld-llama-{_key(world, preset, seed)}.pt"


@dataclass
class TrainedDecoder:
    model: torch.nn.Module
    log: dict
    path: Path
    from_cache: bool


def load_or_train(
    world: RecWorld, preset: DecoderSizes, seed: int = 0, device: str = "cpu", retrain: bool = False
) -> TrainedDecoder:
    """The trained decoder for (world, preset, seed): from the cache, or trained now and cached."""
    path = weights_path(world, preset, seed)
    model = build_model(world.config, preset, seed)
    if path.is_file() and not retrain:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=False)
            model.load_state_dict(blob["state_dict"])
        except Exception as exc:  # a truncated or foreign file
            raise ModelError(
                f"cached weights {path} cannot be read ({exc}); delete the file to retrain"
            ) from exc
        model.eval()
        return TrainedDecoder(model.to(device), blob["log"], path, True)
    model.to(device)
    log = train(model, world, preset, seed)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    parts = key_parts(world, preset, seed)
    save_torch({"state_dict": state, "log": log, "key": content_key(parts), "key_parts": parts}, path)
    return TrainedDecoder(model, log, path, False)


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def score_candidates(model: torch.nn.Module, batch: PromptBatch, chunk: int = 512) -> np.ndarray:
    """Next-token logits at the final position, read at each candidate's token: [n, C] (float64)."""
    tokens = torch.from_numpy(batch.tokens())
    cands = torch.from_numpy(batch.queries.candidates + N_SPECIAL)
    dev = next(model.parameters()).device
    out = []
    for a in range(0, len(tokens), chunk):
        logits = model(input_ids=tokens[a : a + chunk].to(dev)).logits[:, -1].double().cpu()
        out.append(torch.gather(logits, 1, cands[a : a + chunk]))
    return torch.cat(out).numpy()


@torch.no_grad()
def item_log_probs(model: torch.nn.Module, batch: PromptBatch) -> np.ndarray:
    """log-softmax over the items (specials excluded) at the final position: [n, n_items]."""
    tokens = torch.from_numpy(batch.tokens())
    logits = model(input_ids=tokens.to(next(model.parameters()).device)).logits[:, -1, N_SPECIAL:]
    return torch.log_softmax(logits.double(), -1).cpu().numpy()


def single_demo_reaction(
    model: torch.nn.Module, world: RecWorld, queries: Queries, seed: int = 0
) -> dict[str, np.ndarray]:
    """Each query with one demonstration of a random kind (the training prior) against none: arrays [n] of
    the demonstration's ``kind``, its true ``usefulness`` (nats, :meth:`RecWorld.demo_usefulness`), the
    ``model``'s change of log p(target) and the Bayes observer's (``bayes_gain``)."""
    one = world.with_demos(queries, 1, "mixed", np.random.default_rng([seed, 4]))
    zero = world.with_demos(queries, 0, "mixed", np.random.default_rng([seed, 4]))
    idx = np.arange(len(queries))
    lp_one = item_log_probs(model, one)[idx, queries.target]
    lp_zero = item_log_probs(model, zero)[idx, queries.target]
    return {
        "kind": one.demos.kind[:, 0],
        "usefulness": world.demo_usefulness(one)[:, 0],
        "model_gain": lp_one - lp_zero,
        "bayes_gain": world.bayes_scores(one)[:, 0] - world.bayes_scores(zero)[:, 0],
    }

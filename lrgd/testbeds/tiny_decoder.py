"""A tiny RoPE decoder (a real ``LlamaForCausalLM`` of small width) trained from scratch on testbed B.

The model is built from ``transformers``' ``LlamaConfig`` — the same code path as SmolLM2 (RMSNorm,
SwiGLU MLP, rotary embeddings, grouped-query attention) — so :func:`lrgd.llm.forward_captured` and the
chapter-1 dual rebuild apply to it unchanged. Vocabulary: the special tokens of :mod:`lrgd.testbeds.recworld`
followed by one token per item.

Training (our choice): next-token cross-entropy on every *item* token of prompts drawn from the world
with ``k ~ U{0..k_max}`` demonstrations whose kinds follow the world's training prior. Candidates are
scored by the logits at the final (``->``) position.

Trained weights are cached under ``cache_dir()/testbeds`` by a hash of everything that shapes them
(world, sizes, seed and :data:`TRAIN_CODE_VERSION`), so a second execution of the book never retrains.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lrgd.config import DecoderSizes, cache_dir
from lrgd.errors import ConfigError, ModelError
from lrgd.progress import progress
from lrgd.results import save_torch
from lrgd.testbeds.recworld import N_SPECIAL, PromptBatch, RecWorld, WorldConfig

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto inside a kernel without widgets

#: bump when the training loop changes, so stale cached weights are not reused
TRAIN_CODE_VERSION = "1"


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


def _key(world: RecWorld, preset: DecoderSizes, seed: int) -> str:
    blob = {
        "world": asdict(world.config),
        "world_seed": world.seed,
        "preset": {k: v for k, v in asdict(preset).items() if k not in EVAL_FIELDS},
        "seed": seed,
        "code": TRAIN_CODE_VERSION,
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:16]


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
    save_torch({"state_dict": state, "log": log, "key": _key(world, preset, seed)}, path)
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


# ----------------------------------------------------------------------------- chapter-1 duals on this model


def delta_o_check(
    model: torch.nn.Module, prompt, placebo: torch.Tensor, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Chapter 1's Δo comparison (``lrgd.dual.equivalence.delta_o_study``) with an explicit placebo span.

    The testbed's query history is shorter than its demonstrations, so the chapter-1 placebo (a
    non-demonstration block of the demonstrations' length) does not fit; here the caller names the
    placebo span (e.g. the query-history span). Returns [L, H] tensors: ``cos_linear``
    (cos(Δo, ΔW_ICL q)), ``cos_softmax`` (cos(Δo, η(o_D − o_Z))), ``cos_placebo``, ``cos_random``,
    ``direct_ratio`` and ``indirect_ratio`` (‖·‖/‖Δo‖) and ``rebuild_error``.
    """
    from lrgd.dual.algebra import cosine, heads_linear_update, relative_error
    from lrgd.dual.equivalence import split_at
    from lrgd.llm import forward_captured
    from lrgd.rec.prompts import drop_span

    demo = prompt.demo_mask
    if (placebo & demo).any():
        raise ConfigError("the placebo span overlaps the demonstrations; choose a span outside them")
    with_layers = forward_captured(model, prompt.input_ids)
    ids, pos_ids = drop_span(prompt, demo)
    without_layers = forward_captured(model, ids, position_ids=pos_ids)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {}
    for li in sorted(with_layers):
        cap, cap0 = with_layers[li], without_layers[li]
        sp = split_at(cap, demo)
        o_with = cap.out[-1].double()
        delta = o_with - cap0.out[-1].double()
        q = cap.q[:, -1].double()
        lin = heads_linear_update(q, cap.k.double(), cap.v.double(), demo)
        norm = delta.norm(dim=-1).clamp_min(1e-300)
        parts = {
            "cos_linear": cosine(delta, lin),
            "cos_softmax": cosine(delta, sp.update),
            "cos_placebo": cosine(delta, split_at(cap, placebo).update),
            "cos_random": cosine(delta, torch.randn(delta.shape, generator=gen, dtype=torch.float64)),
            "direct_ratio": sp.update.norm(dim=-1) / norm,
            "indirect_ratio": (sp.out_z - cap0.out[-1].double()).norm(dim=-1) / norm,
            "rebuild_error": relative_error(sp.combined(), o_with),
        }
        for name, value in parts.items():
            out.setdefault(name, []).append(value)
    return {name: torch.stack(v) for name, v in out.items()}

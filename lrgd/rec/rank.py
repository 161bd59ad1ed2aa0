"""Rank candidate items with an LLM: score each title as a continuation of one shared prompt.

The prompt runs **once** (``use_cache=True``); every candidate title is then scored against that cached
prompt. Two ways to batch the candidates, both exact (``tests/test_rank.py`` checks them against one full
forward per candidate):

``packed`` (default)
    All titles in one sequence after the prompt, each title attending to the prompt and to its own earlier
    tokens only (a block-causal 4-D mask) and positioned as if it followed the prompt alone. No padding,
    no copy of the prompt cache per candidate.
``batched``
    The prompt cache repeated along the batch, titles right-padded, log-probs gathered under a mask.

The first title token's log-prob comes from the prompt's last logits, so a title of ``L`` tokens costs
``L - 1`` new positions. Three scores per candidate (:data:`SCORE_VARIANTS`):

- ``summed``: :math:`\\sum_t \\log p(y_t \\mid \\text{prompt}, y_{<t})` — favours short titles;
- ``mean``: ``summed / L`` — length-normalised, favours long titles;
- ``pmi``: ``summed`` minus the same title's summed log-prob under a history-free *null* prompt
  (:func:`lrgd.rec.prompts.null_prompt_parts`): how much the user's context raised the title.

:func:`generate_and_parse` is the other mode: the model writes a ranked list of listed candidates and
its lines are mapped back to item ids by fuzzy matching.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from lrgd.errors import ConfigError, ModelError
from lrgd.metrics import rank_of_target, tie_key

SCORE_VARIANTS = ("summed", "mean", "pmi")
SCORING_MODES = ("packed", "batched")


# ----------------------------------------------------------------------------- tokens


def continuation_sep(chat: bool) -> str:
    """What separates the prompt from a title: nothing after a chat template's assistant header
    (it ends with a newline), one space after a plain-text ``Next:``."""
    return "" if chat else " "


def continuation_ids(tokenizer, titles: Sequence[str], sep: str) -> list[list[int]]:
    """Token ids of ``sep + title`` for each title, tokenised on their own (no special tokens)."""
    out = []
    for t in titles:
        ids = tokenizer(sep + t, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ModelError(f"title {t!r} tokenises to nothing; an empty title cannot be scored")
        out.append(list(ids))
    return out


def joint_tokenisation_matches(
    tokenizer, prompt_text: str, prompt_ids: Sequence[int], title_ids, sep: str, title: str
) -> bool:
    """Whether tokenising ``prompt_text + sep + title`` jointly gives ``prompt_ids + title_ids``.

    When it does, scoring the title on the cached prompt is exactly the joint likelihood.
    """
    add = len(prompt_ids) > 0 and prompt_ids[0] == getattr(tokenizer, "bos_token_id", None)
    joint = tokenizer(prompt_text + sep + title, add_special_tokens=False)["input_ids"]
    if add and (not joint or joint[0] != prompt_ids[0]):
        joint = [prompt_ids[0], *joint]
    return list(joint) == [*map(int, prompt_ids), *title_ids]


# ----------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ContinuationScores:
    """Per candidate: summed log-prob and token count (``mean`` is their ratio)."""

    summed: np.ndarray  # [N] float64
    n_tokens: np.ndarray  # [N] int

    @property
    def mean(self) -> np.ndarray:
        return self.summed / self.n_tokens


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _check_window(model, n_prompt: int, conts: Sequence[Sequence[int]], max_new_tokens: int) -> int:
    """Raise :class:`ModelError` if a title cannot be scored after the prompt; return the group size.

    With a sliding-window model (Gemma 3) the cached scorer needs every layer to see the whole prompt:
    a group of titles then feeds at most ``window - 1 - n_prompt`` positions.
    """
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    limit = getattr(cfg, "max_position_embeddings", None)
    longest = max(len(c) for c in conts)
    if limit is not None and n_prompt + longest > limit:
        raise ModelError(
            f"prompt ({n_prompt} tokens) plus the longest title ({longest}) exceed the context "
            f"window of {limit}; use fewer demonstrations or a shorter history "
            "(lrgd.rec.prompts.fit_prompt truncates)"
        )
    window = getattr(cfg, "sliding_window", None)
    if window is not None:
        room = window - 1 - n_prompt
        if room < longest - 1:
            raise ModelError(
                f"prompt ({n_prompt} tokens) plus the longest title ({longest}) exceed the sliding window "
                f"of {window}; the cached scorer needs every layer to see the whole prompt. Use a shorter "
                "prompt (fit_prompt with max_tokens=window) or score_naive()."
            )
        return min(max_new_tokens, room)
    return max_new_tokens


@torch.no_grad()
def encode_prompt(model, prompt_ids: torch.Tensor):
    """Run the prompt once; return (cache, log-probs of the next token [V])."""
    ids = prompt_ids.reshape(1, -1).to(_device(model))
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    return out.cache, torch.log_softmax(out.logits[0, -1].float(), -1)


def _chunks(conts: Sequence[Sequence[int]], max_tokens: int) -> list[list[int]]:
    """Group candidate indices so each group feeds at most ``max_tokens`` new positions (≥ 1 candidate)."""
    groups, cur, size = [], [], 0
    for i, c in enumerate(conts):
        n = max(len(c) - 1, 0)
        if cur and size + n > max_tokens:
            groups.append(cur)
            cur, size = [], 0
        cur.append(i)
        size += n
    if cur:
        groups.append(cur)
    return groups


@torch.no_grad()
def _packed_group(model, cache, n_prompt: int, conts: list[Sequence[int]]) -> list[torch.Tensor]:
    """Log-probs of tokens 2..L of each title in one block-causal sequence after the cached prompt."""
    dev = _device(model)
    feeds = [list(c[:-1]) for c in conts]
    q = sum(len(f) for f in feeds)
    if q == 0:
        return [torch.zeros(0) for _ in conts]
    ids = torch.tensor([t for f in feeds for t in f], device=dev)[None]
    pos = torch.cat([torch.arange(len(f)) for f in feeds]).to(dev)[None] + n_prompt
    seg = torch.cat([torch.full((len(f),), j) for j, f in enumerate(feeds)])
    local = torch.cat([torch.arange(len(f)) for f in feeds])
    block = (seg[:, None] == seg[None, :]) & (local[None, :] <= local[:, None])
    mask = torch.cat([torch.ones(q, n_prompt, dtype=torch.bool), block], 1).to(dev)[None, None]
    try:
        logits = model(input_ids=ids, position_ids=pos, attention_mask=mask, cache=cache).logits[0]
    finally:
        cache.crop(-q)  # back to the prompt alone, for the next group
    logp = torch.log_softmax(logits.float(), -1)
    targets = torch.tensor([t for c in conts for t in c[1:]], device=dev)
    picked = logp.gather(1, targets[:, None])[:, 0].cpu()
    return list(picked.split([len(f) for f in feeds]))


@torch.no_grad()
def _batched_group(model, cache, n_prompt: int, conts: list[Sequence[int]]) -> list[torch.Tensor]:
    """Log-probs of tokens 2..L of each title, the prompt cache repeated along the batch."""
    from transformers import DynamicCache

    dev = _device(model)
    feeds = [list(c[:-1]) for c in conts]
    width = max(len(f) for f in feeds)
    if width == 0:
        return [torch.zeros(0) for _ in conts]
    b = len(feeds)
    pad = 0
    ids = torch.full((b, width), pad, dtype=torch.long)
    tgt = torch.full((b, width), pad, dtype=torch.long)
    valid = torch.zeros(b, width, dtype=torch.bool)
    for j, (f, c) in enumerate(zip(feeds, conts)):
        ids[j, : len(f)] = torch.tensor(f, dtype=torch.long)
        tgt[j, : len(f)] = torch.tensor(list(c[1:]), dtype=torch.long)
        valid[j, : len(f)] = True
    layers = [(k.expand(b, -1, -1, -1), v.expand(b, -1, -1, -1)) for k, v, *_ in cache]
    rep = DynamicCache(ddp_cache_data=layers)
    attn = torch.cat([torch.ones(b, n_prompt, dtype=torch.long), valid.long()], 1).to(dev)
    pos = (torch.arange(width) + n_prompt).expand(b, -1).to(dev)
    logits = model(input_ids=ids.to(dev), attention_mask=attn, position_ids=pos, cache=rep).logits
    logp = torch.log_softmax(logits.float(), -1).gather(2, tgt.to(dev)[..., None])[..., 0].cpu()
    return [logp[j, : len(f)] for j, f in enumerate(feeds)]


@torch.no_grad()
def score_continuations(
    model,
    prompt_ids: torch.Tensor,
    conts: Sequence[Sequence[int]],
    mode: str = "packed",
    max_new_tokens: int = 1024,
    per_token: bool = False,
):
    """Summed log-prob of every continuation after ``prompt_ids``, the prompt encoded once.

    ``max_new_tokens`` bounds the positions fed per forward (candidates are grouped to fit it). Returns
    :class:`ContinuationScores`, or with ``per_token`` a list of per-token log-prob tensors.

    >>> s = score_continuations(lm.model, prompt.input_ids, [[42, 7], [99]])  # doctest: +SKIP
    >>> s.summed.shape, s.n_tokens.tolist()
    ((2,), [2, 1])
    """
    if mode not in SCORING_MODES:
        raise ConfigError(f"unknown scoring mode {mode!r}; choose one of {', '.join(SCORING_MODES)}")
    if not conts or any(len(c) == 0 for c in conts):
        raise ModelError("every candidate needs at least one token; got an empty candidate list or title")
    max_new_tokens = _check_window(model, len(prompt_ids), conts, max_new_tokens)
    cache, first = encode_prompt(model, prompt_ids)
    n_prompt = len(prompt_ids)
    per: list[torch.Tensor | None] = [None] * len(conts)
    run = _packed_group if mode == "packed" else _batched_group
    for group in _chunks(conts, max_new_tokens):
        rest = run(model, cache, n_prompt, [conts[i] for i in group])
        for i, r in zip(group, rest):
            per[i] = torch.cat([first[conts[i][0]].reshape(1).cpu(), r.float()])
    if per_token:
        return per
    return ContinuationScores(
        np.array([float(p.double().sum()) for p in per]), np.array([len(c) for c in conts], dtype=np.int64)
    )


@torch.no_grad()
def score_naive(model, prompt_ids: torch.Tensor, conts: Sequence[Sequence[int]]) -> ContinuationScores:
    """Reference: one full forward of ``prompt + title`` per candidate (no cache)."""
    dev = _device(model)
    sums = []
    n = len(prompt_ids)
    for c in conts:
        ids = torch.cat([prompt_ids.reshape(-1).cpu(), torch.tensor(list(c))]).to(dev)[None]
        logits = model(input_ids=ids, use_cache=False).logits[0, n - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1).gather(1, ids[0, n:, None])[:, 0]
        sums.append(float(logp.double().sum()))
    return ContinuationScores(np.array(sums), np.array([len(c) for c in conts], dtype=np.int64))


# ----------------------------------------------------------------------------- ranking


def rank_order(scores: Sequence[float], items: Sequence[str], user: str, seed: int) -> list[int]:
    """Indices of ``items`` from best to worst: higher score first, ties by :func:`lrgd.metrics.tie_key`
    (the library's one tie convention). NaN scores rank last."""
    s = np.asarray(scores, dtype=np.float64)
    s = np.where(np.isnan(s), -np.inf, s)
    return sorted(range(len(items)), key=lambda j: (-s[j], tie_key(items[j], user, seed)))


def target_rank(scores: Sequence[float], items: Sequence[str], target: str, user: str, seed: int) -> int:
    """1-based rank of ``target`` among ``items`` (:func:`lrgd.metrics.rank_of_target`, the same order as
    :func:`rank_order`)."""
    keys = [tie_key(i, user, seed) for i in items]
    return rank_of_target(scores, list(items).index(target), keys)


def variant_scores(summed: np.ndarray, n_tokens: np.ndarray, null_summed: np.ndarray | None) -> dict:
    """The three score variants from summed log-probs, token counts and null-prompt log-probs."""
    out = {"summed": np.asarray(summed, float), "mean": np.asarray(summed, float) / np.asarray(n_tokens)}
    if null_summed is not None:
        out["pmi"] = np.asarray(summed, float) - np.asarray(null_summed, float)
    return out


# ----------------------------------------------------------------------------- generate and parse

_BULLET = re.compile(r"^\s*(?:\d+[.):]|[-*•])\s*")


def parse_ranked_list(text: str, titles: Sequence[str], cutoff: float = 0.6) -> list[int]:
    """Map the lines of a generated list to candidate indices by fuzzy title matching.

    Numbering and bullets are stripped; a line matches the candidate with the highest
    ``difflib`` ratio if it reaches ``cutoff`` (a candidate title contained in the line also matches).
    Repeated candidates are kept once, at their first mention.
    """
    low = [t.lower() for t in titles]
    found: list[int] = []
    for line in re.split(r"[\n;]", text):
        line = _BULLET.sub("", line).strip().strip(".\"'").lower()
        if len(line) < 2:
            continue
        best, best_r = -1, 0.0
        for j, t in enumerate(low):
            r = 1.0 if (t in line and len(t) >= 4) else difflib.SequenceMatcher(None, line, t).ratio()
            if r > best_r:
                best, best_r = j, r
        if best_r >= cutoff and best not in found:
            found.append(best)
    return found


@dataclass(frozen=True)
class Generated:
    text: str
    order: list[int]  # candidate indices, best first; unmatched candidates appended by tie key
    n_matched: int  # candidates the model named
    parse_failed: bool  # no line matched any candidate


@torch.no_grad()
def generate_and_parse(
    model,
    tokenizer,
    prompt_ids: torch.Tensor,
    titles: Sequence[str],
    items: Sequence[str],
    user: str,
    seed: int,
    max_new_tokens: int = 96,
) -> Generated:
    """Greedy-generate a ranked list after ``prompt_ids`` and parse it back to candidate indices."""
    dev = _device(model)
    ids = prompt_ids.reshape(1, -1).to(dev)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    named = parse_ranked_list(text, titles)
    rest = sorted(
        (j for j in range(len(items)) if j not in named), key=lambda j: tie_key(items[j], user, seed)
    )
    return Generated(text, named + rest, len(named), len(named) == 0)

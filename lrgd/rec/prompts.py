"""Recommendation prompts: X_T, demonstrations X_D, the user's history, candidates → tokens + spans.

The builder returns the token span of every part, because the dual split (chapter 1) and
Effect_D (chapter 3) need to know which positions are demonstrations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lrgd.errors import DataError, ModelError

INSTRUCTION = (
    "You are a recommender system. Given the items a user bought, in order, "
    "predict the item the user will buy next."
)


@dataclass(frozen=True)
class Demonstration:
    """Another user's (history → next item), shown to the model as a worked example."""

    history: tuple[str, ...]
    next_item: str


@dataclass
class Prompt:
    """A tokenised prompt. ``spans`` maps a part name to its [start, end) token range.

    Part names: ``instruction``, ``demo0`` … ``demo{k-1}``, ``history``, ``candidates`` (when
    listed) and ``answer`` (the cue after which the next item is generated).
    """

    text: str
    input_ids: torch.Tensor  # [T]
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)

    def mask(self, *prefixes: str) -> torch.Tensor:
        """Boolean [T] mask of every span whose name starts with one of ``prefixes``."""
        m = torch.zeros(len(self.input_ids), dtype=torch.bool)
        for name, (a, b) in self.spans.items():
            if name.startswith(prefixes):
                m[a:b] = True
        return m

    @property
    def demo_mask(self) -> torch.Tensor:
        """Positions that belong to X_D."""
        return self.mask("demo")


def _items(titles: tuple[str, ...] | list[str]) -> str:
    return "; ".join(titles)


def prompt_parts(
    history: list[str],
    demos: list[Demonstration] = (),
    candidates: list[str] | None = None,
    instruction: str = INSTRUCTION,
) -> list[tuple[str, str]]:
    """The prompt as named text pieces, in order. Titles are joined with ``; ``."""
    if not history:
        raise DataError("empty history: a prompt needs at least one item the user interacted with")
    parts = [("instruction", instruction + "\n\n")]
    for i, d in enumerate(demos):
        if not d.history:
            raise DataError(f"demonstration {i} has an empty history")
        parts.append((f"demo{i}", f"Example {i + 1}. Bought: {_items(d.history)}.\nNext: {d.next_item}\n\n"))
    parts.append(("history", f"Now this user. Bought: {_items(history)}."))
    if candidates:
        parts.append(("candidates", f"\nCandidates: {_items(candidates)}."))
    parts.append(("answer", "\nNext:"))
    return parts


def build_prompt(
    tokenizer, parts: list[tuple[str, str]], chat: bool, max_tokens: int | None = None
) -> Prompt:
    """Tokenise named pieces jointly and map each piece's characters to a token span.

    With ``chat`` the pieces form one user message in the tokenizer's chat template and the
    assistant turn is opened; the template's own tokens belong to no span. Each token belongs
    to the part in which its first character lies.
    """
    content = "".join(t for _, t in parts)
    if chat:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
        offset = text.index(content)
    else:
        text, offset = content, 0
    enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=not chat)
    ids = torch.tensor(enc["input_ids"])
    # special tokens (BOS, …) have empty character ranges and belong to no part
    starts = torch.tensor([a if b > a else -1 for a, b in enc["offset_mapping"]])
    spans, pos = {}, offset
    for name, piece in parts:
        inside = ((starts >= pos) & (starts < pos + len(piece))).nonzero().flatten()
        if len(inside) == 0:
            raise DataError(f"prompt part {name!r} maps to no token")
        spans[name] = (int(inside[0]), int(inside[-1]) + 1)
        pos += len(piece)
    if max_tokens is not None and len(ids) > max_tokens:
        raise ModelError(
            f"prompt has {len(ids)} tokens, over the context window of {max_tokens}; "
            "use fewer demonstrations or a shorter history"
        )
    return Prompt(text, ids, spans)


def drop_span(prompt: Prompt, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove the tokens under ``mask`` but keep every other token's position (a gap in ``position_ids``).

    Returns (input_ids, position_ids) of the shortened sequence.
    """
    keep = ~mask
    positions = torch.arange(len(prompt.input_ids))
    return prompt.input_ids[keep], positions[keep]


def titled(ds, ids: list[str]) -> list[str]:
    """Titles of the items in ``ids`` that have a real title (untitled items are never shown)."""
    return [ds.items[i].title for i in ids if i in ds.items and ds.items[i].has_title]


def random_demonstrations(
    ds, split, user: str, k: int, rng: np.random.Generator, history_len: int = 10
) -> list[Demonstration]:
    """``k`` other users' (training history → next training item), drawn at random.

    Leakage guard (:func:`lrgd.rec.leakage.leaks`): a demonstration is refused when its source sequence
    holds one of ``user``'s held-out items (valid/test targets) or when it shows a held-out item's title.
    """
    from lrgd.rec.leakage import held_out, leaks

    held = held_out(ds, split, user)
    pool = sorted(u for u in split.train if u != user and len(split.train[u]) >= 2)
    demos: list[Demonstration] = []
    for j in rng.permutation(len(pool)):
        seq = split.train[pool[j]]
        hist, nxt = titled(ds, seq[:-1])[-history_len:], seq[-1]
        if not hist or not ds.items[nxt].has_title:
            continue
        demo = Demonstration(tuple(hist), ds.items[nxt].title)
        if leaks(held, ids=seq, titles=(*demo.history, demo.next_item)):
            continue
        demos.append(demo)
        if len(demos) == k:
            return demos
    raise DataError(f"could not find {k} leakage-free demonstrations for user {user!r}")


def user_prompt_parts(
    ds, split, user: str, n_demos: int, n_candidates: int, seed: int, history_len: int = 10
) -> tuple[list[tuple[str, str]], list[str], str]:
    """Prompt pieces for ``user``'s test item: k random demonstrations, last history, listed candidates.

    Returns (parts, candidate ids, target id).
    """
    from lrgd.rec.data import sample_candidates

    if user not in split.test:
        raise DataError(f"unknown user {user!r} (or fewer than 3 items): not in the test split")
    history, target = split.test[user]
    cands = sample_candidates(ds, user, target, history, n=n_candidates, seed=seed)
    rng = np.random.default_rng([seed, len(user), sum(map(ord, user))])
    demos = random_demonstrations(ds, split, user, n_demos, rng, history_len)
    parts = prompt_parts(titled(ds, history)[-history_len:], demos, titled(ds, cands))
    return parts, cands, target


# ----------------------------------------------------------------------------- chapter 2 additions

RANK_INSTRUCTION = (
    "You are a recommender system. Given the items a user bought, in order, rank the candidate items "
    "by how likely the user is to buy each next. Answer with the candidate titles, one per line, best first."
)


def null_prompt_parts(instruction: str = INSTRUCTION) -> list[tuple[str, str]]:
    """The history-free *null* prompt: the instruction and the answer cue, no demonstrations, no user.

    Scoring a title after it measures how likely the title is on its own; PMI subtracts that.
    """
    return [("instruction", instruction + "\n\n"), ("answer", "Next:")]


def generate_prompt_parts(
    history: list[str], demos: list[Demonstration], candidates: list[str]
) -> list[tuple[str, str]]:
    """Pieces of a prompt that asks the model to *write* a ranked list of the listed candidates."""
    parts = prompt_parts(history, demos, candidates, instruction=RANK_INSTRUCTION)
    return [*parts[:-1], ("answer", "\nRanking:")]


@dataclass(frozen=True)
class Truncation:
    """What :func:`fit_prompt` removed to fit the context window."""

    history_dropped: int = 0  # oldest history items removed
    demos_dropped: int = 0  # demonstrations removed (the last ones first)

    @property
    def truncated(self) -> bool:
        return bool(self.history_dropped or self.demos_dropped)


def fit_prompt(
    tokenizer,
    history: list[str],
    demos: list[Demonstration],
    chat: bool,
    max_tokens: int,
    reserve: int = 0,
    candidates: list[str] | None = None,
    parts_fn=prompt_parts,
) -> tuple[Prompt, Truncation]:
    """Build the prompt, fitting ``max_tokens - reserve`` tokens (``reserve``: room for the longest title).

    Policy: drop the oldest history items first (keeping at least one), then demonstrations, last one
    first. Every removal is counted in the returned :class:`Truncation`; a prompt that still does not fit
    raises :class:`ModelError` naming the fix.
    """
    if not history:
        raise DataError("empty history: a prompt needs at least one item the user interacted with")
    budget = max_tokens - reserve
    hist, ds_ = list(history), list(demos)
    dropped_h = dropped_d = 0
    while True:
        args = (hist, ds_) if candidates is None else (hist, ds_, candidates)
        prompt = build_prompt(tokenizer, parts_fn(*args), chat=chat)
        n = len(prompt.input_ids)
        if n <= budget:
            return prompt, Truncation(dropped_h, dropped_d)
        if len(hist) > 1:
            hist, dropped_h = hist[1:], dropped_h + 1
        elif ds_:
            ds_, dropped_d = ds_[:-1], dropped_d + 1
        else:
            raise ModelError(
                f"prompt has {n} tokens with one history item and no demonstrations, over the budget of "
                f"{budget} (context window {max_tokens} minus {reserve} reserved for the title); "
                "use a model with a longer context window or shorter titles"
            )

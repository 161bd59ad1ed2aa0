"""Chapter 3 on a real LLM: Effect_D against the true gain for M demonstrations × N users (§3.4), and the
leakage checks of §3.4 and §3.5. Tables and sentences are in :mod:`lrgd.demos.effect_report`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from lrgd.demos import effect as fx
from lrgd.errors import DataError, ModelError
from lrgd.rec.leakage import count_leaks, held_out, shown_in_prompt
from lrgd.rec.prompts import Demonstration, prompt_parts, titled
from lrgd.rec.select import DemoPool

#: the user's last titles in a §3.4 prompt, and the demonstrations' history length
HISTORY_LEN = 5
#: modules whose source determines the §3.4 matrices (their code hash keys the cache; the users and
#: demonstrations, hence the guard's choices, are in the key's configuration)
CODE = ("lrgd.demos.effect", "lrgd.demos.effect_study", "lrgd.rec.prompts", "lrgd.llm")


# ----------------------------------------------------------------------------- §3.4: pairs on a real LLM


@dataclass
class LLMPairs:
    """N users and M demonstrations of a dataset, as the real LLM sees them.

    ``sources`` [M] (pool user, cut) and ``demos`` [M] the demonstrations; ``tokens`` [M] their ids in
    the slot; ``prompts`` [N] each user's zero-shot :class:`lrgd.demos.effect.SlotPrompt` (last
    :data:`HISTORY_LEN` titles, target = the held-out test item's title).
    """

    users: list[str]
    sources: list[tuple[str, int]]
    demos: list[Demonstration]
    tokens: list[torch.Tensor]
    prompts: list[fx.SlotPrompt]

    @property
    def slot(self) -> int:
        return self.prompts[0].slot


def study_users(split, n: int, rng: np.random.Generator) -> list[str]:
    """``n`` test users drawn without replacement from the sorted test users."""
    everyone = sorted(split.test)
    if n > len(everyone):
        raise DataError(f"{n} users asked for but the dataset has {len(everyone)} test users; lower n_users")
    return [everyone[i] for i in rng.choice(len(everyone), n, replace=False)]


def shared_demonstrations(
    ds, split, users: list[str], n: int, rng: np.random.Generator, history_len: int = HISTORY_LEN
) -> tuple[list[tuple[str, int]], list[Demonstration]]:
    """``n`` demonstrations shown to every one of ``users``: other users' final training transitions.

    Candidates come in a seeded random order over the training users with ≥ 2 items other than the
    first evaluated user (the order of :func:`lrgd.rec.prompts.random_demonstrations` for that user); each
    passes the library's one leakage guard (:meth:`lrgd.rec.select.DemoPool.allowed`) for *every*
    evaluated user: not their own sequence, and none of their held-out items shown, by id or by title.
    """
    pool = DemoPool(ds, split, history_len)
    held = held_out(ds, split, users)
    order = sorted(u for u in split.train if u != users[0] and len(split.train[u]) >= 2)
    sources, demos = [], []
    for j in rng.permutation(len(order)):
        src = order[j]
        built = pool.make(src, len(split.train[src]) - 1)
        if built is None or not all(pool.allowed(u, src, built[1], held) for u in users):
            continue
        sources.append((src, len(split.train[src]) - 1))
        demos.append(built[0])
        if len(demos) == n:
            return sources, demos
    raise DataError(f"only {len(demos)} leakage-free demonstrations for {len(users)} users; lower n_demos")


def llm_pairs(lm, ds, split, n_demos: int, n_users: int, seed: int = 0) -> LLMPairs:
    """The §3.4 study: users, demonstrations, their tokens and the users' slot prompts (seeded)."""
    rng = np.random.default_rng([seed, 6])
    users = study_users(split, n_users, rng)
    sources, demos = shared_demonstrations(ds, split, users, n_demos, rng)
    tokens = [fx.demo_tokens(lm.tokenizer, d.history, d.next_item) for d in demos]
    slot = max(len(t) for t in tokens)
    prompts = [
        fx.slot_prompt(
            lm.tokenizer, prompt_parts(titled(ds, split.test[u][0])[-HISTORY_LEN:]),
            ds.title(split.test[u][1]), lm.info.chat, slot,
        )
        for u in users
    ]  # fmt: skip
    return LLMPairs(users, sources, demos, tokens, prompts)


def leaks_as_built(pairs: LLMPairs, tokenizer, ds, split) -> int:
    """(demonstration, user) prompts that show one of the user's held-out titles, read from the decoded
    tokens the true gain is computed on (:func:`lrgd.rec.leakage.count_leaks`), not from the guard.

    Raises :class:`ModelError` when a prompt's decoded text does not show exactly one demonstration block
    (a tokenizer whose decoding loses the template would otherwise count nothing and look clean).
    """
    total = 0
    for user, sp in zip(pairs.users, pairs.prompts):
        held = held_out(ds, split, user)
        for tokens in pairs.tokens:
            ids, _, start = sp.layout(tokens)
            text = tokenizer.decode(ids[:start].tolist())
            if len(shown_in_prompt(text)) != 1:
                raise ModelError(
                    f"cannot read the demonstration back from the decoded prompt of user {user!r}: "
                    "the tokenizer's decode does not reproduce the prompt template"
                )
            total += count_leaks(text, held)
    return total


def llm_matrices(model, pairs: LLMPairs, third: int) -> dict[str, np.ndarray]:
    """Effect_D, its ablations and the true gain [M, N] for every pair (M + 2N passes + N + M·N for the
    gain; the ablations reuse the states). ``third``: the layers of the "early layers" ablation."""
    sps, ids = pairs.prompts, pairs.tokens
    d_states = fx.demo_states(model, sps, ids)
    u_all = fx.user_states(model, sps, "all")
    out = {
        "true gain": fx.true_gain_matrix(model, sps, ids),
        "Effect_D": fx.effect_matrix(d_states, u_all),
        "linear dual (ΔW_ICL q)": fx.effect_matrix(d_states, u_all, form="linear"),
        "derivative rate": fx.effect_matrix(d_states, u_all, rate="derivative"),
        f"early layers only (< {third})": fx.effect_matrix(d_states, u_all, layers=list(range(third))),
        "no RoPE positioning": fx.effect_matrix(fx.demo_states(model, sps, ids, at_slot=False), u_all),
    }
    for which in ("target", "end"):
        out[f"gradient at {which} positions"] = fx.effect_matrix(d_states, fx.user_states(model, sps, which))
    return {k: v.numpy() for k, v in out.items()}


def matrices_key(pairs: LLMPairs, lm, dataset: str, fingerprint: str, device: str, seed: int) -> dict:
    """What determines :func:`llm_matrices`: the full configuration, the data fingerprint, the weights'
    hash and the code hash of :data:`CODE` (the key parts of :func:`lrgd.results.cached_json`)."""
    from lrgd.results import code_hash

    config = {
        "dataset": dataset, "model": lm.info.name, "device": device, "dtype": str(lm.model.dtype),
        "seed": seed, "history_len": HISTORY_LEN, "users": pairs.users, "sources": pairs.sources,
        "demos": [asdict(d) for d in pairs.demos],
    }  # fmt: skip
    return {"config": config, "data": fingerprint, "weights": lm.info.sha256, "code": code_hash(*CODE)}


def cached_matrices(path, pairs: LLMPairs, lm, dataset: str, fingerprint: str, device: str, seed: int):
    """:func:`llm_matrices`, computed once per key and stored at ``path``: (matrices, from_cache)."""
    from lrgd.results import cached_json

    third = max(1, lm.info.n_layers // 3)
    key = matrices_key(pairs, lm, dataset, fingerprint, device, seed)
    mats, hit = cached_json(
        path, key, lambda: {k: v.tolist() for k, v in llm_matrices(lm.model, pairs, third).items()}
    )
    return {k: np.array(v) for k, v in mats.items()}, hit


# ----------------------------------------------------------------------------- §3.5: leakage re-check


def selection_leaks(pool, records: list[dict]) -> int:
    """Demonstrations in the records' prompts that show the user's held-out item by id or by title,
    rebuilt from their sources (``demo_sources``) and checked against the held-out items directly."""
    leaked = 0
    for rec in records:
        held = pool.held_out(rec["user"])
        for src, cut in rec["demo_sources"]:
            demo, ids = pool.make(src, cut)
            leaked += bool(held & set(ids)) or count_leaks([demo], held) > 0
    return leaked

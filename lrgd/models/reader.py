"""The reader: a small RoPE transformer trained to read demonstrations, on anonymised items.

Why anonymised. A model that learns one embedding per item id stores what demonstrations would tell it
(which item follows which) in its weights, and then has no use for them (measured in chapter 2b). Here an
item token carries only what a new catalogue would also offer:

    x(item) = W_t · title(item) + W_p · [popularity percentile, log-popularity] + tag(item)

``title`` is the frozen all-MiniLM-L6-v2 vector of the title (dropped with ``sizes.titles = False``: the
*anonymous* reader, whose items carry nothing but popularity and a tag), the popularity features come
from the training split, and ``tag`` is an identity embedding whose *slot is drawn afresh for every prompt*
(:func:`assign_slots`): inside one prompt the same item always carries the same tag, across prompts the
tag means nothing. Whether a candidate appeared as some demonstration's next item is therefore visible
only through the prompt, and the model must read its demonstrations to use it.

A prompt, one token per position (roles in :data:`ROLES`)::

    BOS  (h_1 … h_m  next)×k  q_1 … q_L  FINAL          m = sizes.demo_history, L = sizes.query_len

Missing history items are PAD tokens (role only). Candidates are scored in one forward pass:
``score(c) = ⟨W_o · hidden(FINAL), x(c)⟩ / √d`` with the same item map ``x`` (weights shared), so a
head that copies a demonstration's next-item tag into FINAL raises exactly that candidate.

Training (:func:`train`) uses only training prefixes of chapter 2's leave-last-two-out split: a query
is a *training* user's prefix ending before a position t of their training sequence, the target is the
item at t, negatives are uniform items the user never touched in training, and demonstrations are
other users' training windows — ``transition`` (the window ends with the query's last item, or with an
earlier query item), ``random``, or ``corrupted`` (a transition whose next item is replaced by a random
one), mixed per demonstration by ``sizes.kind_probs``. A share of users of each training catalogue
(``sizes.heldout_user_share``) never supplies a training query; their prefixes give the held-out loss
curve. No valid or test item of any user is ever seen.

Reading is learned slowly from real data alone: a demonstration's next item is the target in only a few
per cent of prompts. Training therefore starts with ``sizes.copy_warmup`` steps on a synthetic *successor
world* (:func:`successor_catalogue`, k ≤ 4), where the demonstrations that start at the query's last item
almost always name the target, and keeps a share ``sizes.copy_share`` of later batches there; the
identity tags make what is learned there transferable (measured in chapter 2b).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lrgd.config import ReaderSizes, cache_dir
from lrgd.errors import ConfigError, DataError, ModelError
from lrgd.results import atomic_write_torch, code_hash, content_key

ROLES = {"pad": 0, "bos": 1, "demo": 2, "next": 3, "query": 4, "final": 5}
KINDS = ("transition", "random", "corrupted")
N_FEATS = 2  # popularity percentile, log-popularity / log max popularity


# ----------------------------------------------------------------------------- a catalogue


@dataclass
class Catalogue:
    """One dataset's items as the reader sees them, and its training sequences as index arrays.

    ``title`` [n, 384] unit MiniLM vectors (zero for untitled items), ``feats`` [n, 2]; ``seqs[u]`` the
    training sequence of user index ``u`` as item indices; ``occ[i]`` [(user, pos)] where item ``i`` is
    followed by another (``seqs[user][pos - 1] == i``); ``trans`` every (user, pos ≥ 1).
    """

    name: str
    ids: list[str]
    index: dict[str, int]
    title: np.ndarray
    feats: np.ndarray
    users: list[str]
    seqs: list[np.ndarray]
    occ: dict[int, np.ndarray]
    trans: np.ndarray
    titled: np.ndarray
    fingerprint: str

    def demo(self, user: int, pos: int, m: int) -> tuple[np.ndarray, int]:
        """The window of ``seqs[user]`` ending before ``pos``: (last ``m`` history items, next item)."""
        s = self.seqs[user]
        return s[max(0, pos - m) : pos], int(s[pos])


def popularity_features(counts: np.ndarray) -> np.ndarray:
    """[n] training interactions → [n, 2]: percentile rank (ties share the mean rank), log1p / log1p(max)."""
    n = len(counts)
    order = np.argsort(counts, kind="stable")
    ranks = np.empty(n)
    ranks[order] = np.arange(n)
    for c in np.unique(counts):  # mean rank of ties, so equal counts get equal features
        m = counts == c
        ranks[m] = ranks[m].mean()
    pct = ranks / max(n - 1, 1)
    logp = np.log1p(counts) / max(np.log1p(counts.max()), 1e-9)
    return np.stack([pct, logp], axis=1).astype(np.float32)


def build_catalogue(ds, split, fingerprint: str, embedder=None) -> Catalogue:
    """The :class:`Catalogue` of a loaded dataset and its leave-one-out split; titles embedded once when
    an ``embedder`` is given (zero vectors otherwise: what the anonymous reader sees anyway)."""
    ids = sorted(ds.items)
    index = {i: j for j, i in enumerate(ids)}
    titled = np.array([j for j, i in enumerate(ids) if ds.items[i].has_title], dtype=np.int64)
    title = np.zeros((len(ids), 384), dtype=np.float32)
    if len(titled) and embedder is not None:
        title[titled] = embedder.encode([ds.items[ids[j]].title for j in titled])
    users = sorted(split.train)
    seqs = [np.array([index[i] for i in split.train[u]], dtype=np.int64) for u in users]
    counts = np.zeros(len(ids))
    for s in seqs:
        np.add.at(counts, s, 1)
    occ: dict[int, list] = {}
    trans = []
    for u, s in enumerate(seqs):
        for p in range(1, len(s)):
            occ.setdefault(int(s[p - 1]), []).append((u, p))
            trans.append((u, p))
    if not trans:
        raise DataError(f"{ds.name}: no training transitions (every training sequence has one item)")
    return Catalogue(
        ds.name, ids, index, title, popularity_features(counts), users, seqs,
        {i: np.array(v, dtype=np.int64) for i, v in occ.items()}, np.array(trans, dtype=np.int64),
        titled, fingerprint,
    )  # fmt: skip


def successor_catalogue(
    seed: int, n_items: int = 400, n_users: int = 3000, length: int = 12, follow: float = 0.8
) -> Catalogue:
    """A synthetic catalogue that rewards reading: every item has one successor, followed with
    probability ``follow`` (else a uniform item); titles are random unit vectors and popularity is flat,
    so the next item of a query can only be learned from demonstrations that start where it ends."""
    rng = np.random.default_rng([seed, 17])
    succ = rng.permutation(n_items)
    seqs = []
    for _ in range(n_users):
        s = [int(rng.integers(n_items))]
        for _ in range(length - 1):
            s.append(int(succ[s[-1]]) if rng.random() < follow else int(rng.integers(n_items)))
        seqs.append(np.array(s, dtype=np.int64))
    title = rng.normal(size=(n_items, 384)).astype(np.float32)
    title /= np.linalg.norm(title, axis=1, keepdims=True)
    counts = np.bincount(np.concatenate(seqs), minlength=n_items).astype(float)
    occ: dict[int, list] = {}
    for u, s in enumerate(seqs):
        for p in range(1, len(s)):
            occ.setdefault(int(s[p - 1]), []).append((u, p))
    trans = np.array([(u, p) for u, s in enumerate(seqs) for p in range(1, len(s))], dtype=np.int64)
    ids = [f"s{i}" for i in range(n_items)]
    return Catalogue(
        f"successor-{seed}", ids, {i: j for j, i in enumerate(ids)}, title, popularity_features(counts),
        [f"u{u}" for u in range(n_users)], seqs, {i: np.array(v, dtype=np.int64) for i, v in occ.items()},
        trans, np.arange(n_items), f"successor-{seed}-{n_items}-{n_users}-{length}-{follow}",
    )  # fmt: skip


# ----------------------------------------------------------------------------- prompts


@dataclass
class Batch:
    """Encoded prompts of one catalogue, all of the same length T, and their candidates.

    ``role``/``item``/``slot`` [B, T] (``item`` −1 at non-item tokens); ``cand``/``cand_slot`` [B, C];
    ``label`` [B] the target's column in ``cand`` (−1 when unknown).
    """

    role: torch.Tensor
    item: torch.Tensor
    slot: torch.Tensor
    cand: torch.Tensor
    cand_slot: torch.Tensor
    label: torch.Tensor


def assign_slots(items: Sequence[int], n_tags: int, rng: np.random.Generator) -> dict[int, int]:
    """A fresh identity tag per distinct item of one prompt: a random injective map item → slot."""
    distinct = list(dict.fromkeys(int(i) for i in items))
    if len(distinct) > n_tags:
        raise ConfigError(
            f"a prompt holds {len(distinct)} distinct items but reader.n_tags={n_tags}; raise n_tags"
        )
    return dict(zip(distinct, rng.permutation(n_tags)[: len(distinct)].tolist(), strict=True))


def encode(
    demos: Sequence[tuple[Sequence[int], int]],
    query: Sequence[int],
    cands: Sequence[int],
    sizes: ReaderSizes,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """One prompt → (role [T], item [T], slot [T], cand [C], cand_slot [C]), T = 2 + k(m+1) + L.

    Histories longer than ``m`` (demonstrations) or ``L`` (the query) keep their most recent items;
    shorter ones are left-padded with PAD tokens.
    """
    m, L = sizes.demo_history, sizes.query_len
    role, item = [ROLES["bos"]], [-1]
    for hist, nxt in demos:
        h = list(hist)[-m:]
        role += [ROLES["pad"]] * (m - len(h)) + [ROLES["demo"]] * len(h) + [ROLES["next"]]
        item += [-1] * (m - len(h)) + [int(i) for i in h] + [int(nxt)]
    q = list(query)[-L:]
    role += [ROLES["pad"]] * (L - len(q)) + [ROLES["query"]] * len(q) + [ROLES["final"]]
    item += [-1] * (L - len(q)) + [int(i) for i in q] + [-1]
    slots = assign_slots([i for i in item if i >= 0] + list(cands), sizes.n_tags, rng)
    slot = [slots.get(i, 0) for i in item]
    return (
        np.array(role), np.array(item), np.array(slot),
        np.array(cands, dtype=np.int64), np.array([slots[int(c)] for c in cands]),
    )  # fmt: skip


def collate(encoded: Sequence[tuple[np.ndarray, ...]], labels: Sequence[int]) -> Batch:
    """Stack prompts of equal length into a :class:`Batch`."""
    cols = [torch.from_numpy(np.stack([e[j] for e in encoded])) for j in range(5)]
    return Batch(*cols, label=torch.tensor(list(labels)))


# ----------------------------------------------------------------------------- the model


class Reader(nn.Module):
    """Item map ``x`` (title, popularity, per-prompt tag), role embeddings, a Llama stack, a read-out."""

    def __init__(self, sizes: ReaderSizes, title_dim: int = 384) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        d = sizes.hidden
        self.title = nn.Linear(title_dim, d, bias=False) if sizes.titles else None
        self.pop = nn.Linear(N_FEATS, d)
        self.tag = nn.Embedding(sizes.n_tags, d)
        self.role = nn.Embedding(len(ROLES), d)
        cfg = LlamaConfig(
            vocab_size=2, hidden_size=d, intermediate_size=sizes.intermediate,
            num_hidden_layers=sizes.layers, num_attention_heads=sizes.heads,
            num_key_value_heads=sizes.heads, max_position_embeddings=4096,
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, use_cache=False,
            bos_token_id=None, eos_token_id=None, pad_token_id=None,
        )  # fmt: skip
        self.body = LlamaModel(cfg)
        self.body.set_attn_implementation("sdpa")
        self.out = nn.Linear(d, d, bias=False)
        nn.init.normal_(self.tag.weight, std=1.0)
        # the pointer read-out: FINAL weighs each demonstration's next-item token, the weight goes to the
        # candidate with the same tag
        self.pointer = nn.ModuleDict({"q": nn.Linear(d, d), "k": nn.Linear(d, d)}) if sizes.pointer else None

    def items(self, cat: Catalogue, item: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """x(item) for indices ``item`` [...] (−1 → zeros) with tags ``slot`` [...] → [..., d]."""
        ok = item >= 0
        idx = item.clamp_min(0)
        x = self.pop(torch.from_numpy(cat.feats)[idx]) + self.tag(slot)
        if self.title is not None:
            x = x + self.title(torch.from_numpy(cat.title)[idx])
        return x * ok[..., None]

    def embed(self, cat: Catalogue, b: Batch) -> torch.Tensor:
        """Input embeddings [B, T, d] of a batch."""
        return self.role(b.role) + self.items(cat, b.item, b.slot)

    def forward(self, cat: Catalogue, b: Batch) -> torch.Tensor:
        """Candidate scores [B, C]: ⟨W_o h_FINAL, x(c)⟩/√d, plus the pointer read-out when present."""
        hs = self.body(inputs_embeds=self.embed(cat, b)).last_hidden_state
        h = hs[:, -1]
        c = self.items(cat, b.cand, b.cand_slot)
        scores = (self.out(h)[:, None, :] * c).sum(-1) / math.sqrt(h.shape[-1])
        if self.pointer is not None:
            scores = scores + self.read(hs, b)
        return scores

    def read(self, hs: torch.Tensor, b: Batch) -> torch.Tensor:
        """The pointer read-out [B, C]: Σ_j a_j · [tag of next item j = tag of c], over the demonstrations'
        next-item tokens j, with a_j = softplus(⟨W_q h_FINAL, W_k h_j⟩/√d) ≥ 0 — a vote in which the
        model decides how much each demonstration counts."""
        d = hs.shape[-1]
        q = self.pointer["q"](hs[:, -1])
        a = nn.functional.softplus((self.pointer["k"](hs) * q[:, None, :]).sum(-1) / math.sqrt(d))  # [B, T]
        a = a * (b.role == ROLES["next"])
        same = (b.slot[:, :, None] == b.cand_slot[:, None, :]).to(hs.dtype)  # [B, T, C]
        return torch.einsum("bt,btc->bc", a, same)


# ----------------------------------------------------------------------------- training data


def user_split(cat: Catalogue, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(training-query users, held-out users): a fixed hash split of user ids, share held out."""
    held = np.array([zlib.crc32(f"reader|{u}".encode()) % 10_000 < share * 10_000 for u in cat.users])
    usable = np.array([len(s) >= 2 for s in cat.seqs])
    return np.flatnonzero(usable & ~held), np.flatnonzero(usable & held)


def _pick(rows: np.ndarray, user: int, rng: np.random.Generator, tries: int = 8) -> np.ndarray | None:
    """A random (user, pos) row of ``rows`` from another user than ``user``."""
    for _ in range(tries if len(rows) else 0):
        r = rows[rng.integers(len(rows))]
        if r[0] != user:
            return r
    return None


def sample_demos(
    cat: Catalogue, user: int, query: np.ndarray, k: int, sizes: ReaderSizes, rng: np.random.Generator
) -> list[tuple[np.ndarray, int]]:
    """k demonstrations from other users' training windows, kinds mixed by ``sizes.kind_probs``."""
    out = []
    for kind in rng.choice(3, size=k, p=sizes.kind_probs):
        row = None
        if KINDS[kind] != "random":  # anchored at the last query item, sometimes an earlier one
            anchor = query[-1] if rng.random() < 0.75 else query[rng.integers(len(query))]
            row = _pick(cat.occ.get(int(anchor), np.empty((0, 2), np.int64)), user, rng)
        if row is None:
            row = _pick(cat.trans, user, rng)
        hist, nxt = cat.demo(int(row[0]), int(row[1]), sizes.demo_history)
        if KINDS[kind] == "corrupted":
            nxt = int(cat.titled[rng.integers(len(cat.titled))])
        out.append((hist, nxt))
    return out


def negatives(cat: Catalogue, seen: set[int], n: int, rng: np.random.Generator) -> list[int]:
    """``n`` distinct uniform titled items outside ``seen``."""
    out: list[int] = []
    while len(out) < n:
        for j in rng.choice(cat.titled, size=2 * n):
            if int(j) not in seen and int(j) not in out:
                out.append(int(j))
                if len(out) == n:
                    break
    return out


def sample_batch(
    cat: Catalogue, users: np.ndarray, k: int, sizes: ReaderSizes, rng: np.random.Generator, n: int
) -> Batch:
    """``n`` training prompts with ``k`` demonstrations each, queries from ``users``' training prefixes."""
    enc, labels = [], []
    for _ in range(n):
        u = int(users[rng.integers(len(users))])
        s = cat.seqs[u]
        t = int(rng.integers(1, len(s)))
        query = s[max(0, t - sizes.query_len) : t]
        cands = [int(s[t]), *negatives(cat, set(s.tolist()), sizes.n_negatives, rng)]
        perm = rng.permutation(len(cands))
        demos = sample_demos(cat, u, query, k, sizes, rng)
        enc.append(encode(demos, query, [cands[j] for j in perm], sizes, rng))
        labels.append(int(np.flatnonzero(perm == 0)[0]))
    return collate(enc, labels)


# ----------------------------------------------------------------------------- training (resumable)


def weights_key(sizes: ReaderSizes, data: dict[str, str], embedder_fp: str, seed: int) -> str:
    """Hash of everything the trained weights depend on: the training sizes (evaluation-only ones
    excluded), each training dataset's fingerprint (``data`` name → fingerprint), the title embedder,
    this module's source and the seed."""
    evaluation = ("eval_ks", "eval_datasets", "eval_selectors", "models", "n_users", "n_valid_users",
                  "threads", "dual_users", "dual_demos")  # fmt: skip
    train = {k: v for k, v in asdict(sizes).items() if k not in evaluation}
    return content_key(
        {"sizes": train, "data": data, "embedder": embedder_fp, "code": code_hash("lrgd.models.reader"),
         "seed": seed}
    )  # fmt: skip


def weights_path(sizes: ReaderSizes, data: dict[str, str], embedder_fp: str, seed: int = 0) -> Path:
    """Where the reader of this configuration is (or will be) cached."""
    return cache_dir() / "reader" / f"reader-{weights_key(sizes, data, embedder_fp, seed)}.pt"


def _lr(step: int, sizes: ReaderSizes) -> float:
    """Linear warm-up, then cosine decay to 10 %."""
    if step < sizes.warmup:
        return sizes.lr * (step + 1) / sizes.warmup
    frac = (step - sizes.warmup) / max(1, sizes.steps - sizes.warmup)
    return sizes.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass
class Trained:
    """A trained reader, its weights file and its training log."""

    model: Reader
    path: Path
    log: dict


def heldout_batches(cats: Sequence[Catalogue], sizes: ReaderSizes, seed: int, n: int = 64) -> list:
    """Fixed prompts from the held-out users of each catalogue, at each training k (the loss curve's)."""
    rng = np.random.default_rng([seed, 11])
    out = []
    for cat in cats:
        held = user_split(cat, sizes.heldout_user_share)[1]
        if len(held):
            out += [(cat, k, sample_batch(cat, held, k, sizes, rng, n)) for k in (0, 4, 16)]
    return out


@torch.no_grad()
def heldout_loss(model: Reader, batches) -> dict[str, float]:
    """Mean cross-entropy on the held-out prompts, per ``"<catalogue> k<k>"``."""
    model.eval()
    out: dict[str, list[float]] = {}
    for cat, k, b in batches:
        loss = float(nn.functional.cross_entropy(model(cat, b), b.label))
        out.setdefault(f"{cat.name} k{k}", []).append(loss)
    model.train()
    return {k: float(np.mean(v)) for k, v in out.items()}


def train(
    cats: Sequence[Catalogue], sizes: ReaderSizes, path: Path, seed: int = 0, desc: str = "reader"
) -> Trained:
    """Train (or resume) a reader on ``cats``; checkpoints every ``sizes.checkpoint_every`` steps to
    ``path.with_suffix('.partial')`` and writes ``path`` when done."""
    from lrgd.progress import progress

    part = path.with_suffix(".partial")
    torch.manual_seed(seed)
    model = Reader(sizes)
    opt = torch.optim.AdamW(
        model.parameters(), lr=sizes.lr, weight_decay=sizes.weight_decay, betas=(0.9, 0.98)
    )
    rng = np.random.default_rng([seed, 3])
    log: dict = {"loss": [], "heldout": [], "seconds": 0.0, "prompts": 0, "tokens": 0}
    start = 0
    if part.is_file():
        try:
            ck = torch.load(part, weights_only=False)
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            rng.bit_generator.state, log, start = ck["rng"], ck["log"], ck["step"]
            torch.set_rng_state(ck["torch_rng"])
        except (OSError, RuntimeError, KeyError, EOFError, ValueError):
            start = 0  # an unreadable checkpoint is started over
    if sizes.copy_share > 0:  # a synthetic successor world teaches the reading (see successor_catalogue)
        cats = [*cats, successor_catalogue(seed)]
    splits = [user_split(c, sizes.heldout_user_share)[0] for c in cats]
    weights = np.array([len(c.trans) for c in cats], dtype=float)
    if sizes.copy_share > 0:
        weights[:-1] *= (1 - sizes.copy_share) / weights[:-1].sum()
        weights[-1] = sizes.copy_share
    weights /= weights.sum()
    warm_ks = [k for k in sizes.train_ks if 0 < k <= 4] or [1]
    held = heldout_batches(cats, sizes, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(sizes.threads)
    model.train()
    window: list[float] = []
    t0 = time.perf_counter() - log["seconds"]
    try:
        for step in progress(range(start, sizes.steps), desc, total=sizes.steps - start):
            if step < sizes.copy_warmup:  # the curriculum: learn to read on the successor world first
                c, k = len(cats) - 1, int(rng.choice(warm_ks))
            else:
                c, k = int(rng.choice(len(cats), p=weights)), int(rng.choice(sizes.train_ks))
            b = sample_batch(cats[c], splits[c], k, sizes, rng, sizes.batch)
            loss = nn.functional.cross_entropy(model(cats[c], b), b.label)
            for g in opt.param_groups:
                g["lr"] = _lr(step, sizes)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            window.append(loss.item())
            log["prompts"] += sizes.batch
            log["tokens"] += int(b.role.numel())
            if (step + 1) % 50 == 0:
                log["loss"].append((step + 1, float(np.mean(window))))
                window = []
            if (step + 1) % sizes.checkpoint_every == 0 or step + 1 == sizes.steps:
                log["heldout"].append((step + 1, heldout_loss(model, held)))
                log["seconds"] = time.perf_counter() - t0
                atomic_write_torch(part, {"model": model.state_dict(), "opt": opt.state_dict(),
                                          "rng": rng.bit_generator.state, "log": log, "step": step + 1,
                                          "torch_rng": torch.get_rng_state()})  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    model.eval()
    atomic_write_torch(path, {"model": model.state_dict(), "log": log})
    part.unlink(missing_ok=True)
    return Trained(model, path, log)


def load_or_train(cats: Sequence[Catalogue], sizes: ReaderSizes, embedder_fp: str, seed: int = 0) -> Trained:
    """The reader trained on ``cats`` with ``sizes``: read from the cache, else trained (resuming)."""
    path = weights_path(sizes, {c.name: c.fingerprint for c in cats}, embedder_fp, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        try:
            saved = torch.load(path, weights_only=False)
            model = Reader(sizes)
            model.load_state_dict(saved["model"])
            return Trained(model.eval(), path, saved["log"])
        except (OSError, RuntimeError, KeyError, EOFError) as exc:
            raise ModelError(
                f"{path}: unreadable trained reader ({exc}); delete the file to retrain"
            ) from None
    return train(cats, sizes, path, seed)


# ----------------------------------------------------------------------------- scoring


@torch.no_grad()
def score(
    model: Reader,
    cat: Catalogue,
    demos: Sequence[tuple[Sequence[str], str]],
    history: Sequence[str],
    candidates: Sequence[str],
    sizes: ReaderSizes,
    seed: int,
) -> np.ndarray:
    """Scores [C] of ``candidates`` (item ids) for a query ``history`` and demonstrations given as
    (history ids, next id); tags drawn by ``seed`` (one forward pass)."""
    e = encode_query(cat, demos, history, candidates, sizes, seed)
    return model(cat, collate([e], [-1]))[0].numpy().astype(np.float64)


def encode_query(
    cat: Catalogue,
    demos: Sequence[tuple[Sequence[str], str]],
    history: Sequence[str],
    candidates: Sequence[str],
    sizes: ReaderSizes,
    seed: int,
) -> tuple[np.ndarray, ...]:
    """One evaluation prompt encoded (:func:`encode`) from item ids, tags drawn by ``seed``; demonstration
    items outside the catalogue are left out, a query or candidate item outside it is a DataError."""
    ix = cat.index
    missing = [i for i in (*history, *candidates) if i not in ix]
    if missing:
        raise DataError(f"{cat.name}: items {missing[:3]} are not in the catalogue the reader was given")
    d = [([ix[i] for i in h if i in ix], ix[n]) for h, n in demos if n in ix]
    rng = np.random.default_rng(seed)
    return encode(d, [ix[i] for i in history], [ix[c] for c in candidates], sizes, rng)

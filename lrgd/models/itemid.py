"""The item-id sequential recommender: SASRec (Kang & McAuley 2018) at k = 0, one model per dataset.

What a recommender learns *in its weights* from chapter 2's training split, with no demonstrations:
items are ids, the model reads a user's last ``max_len`` items and scores every item as the next one.

Model (:class:`SASRec`)
    item embedding E [V+1, H] (row 0 = padding) + learned position embedding [max_len, H] → dropout →
    ``layers`` pre-norm causal self-attention blocks (:class:`torch.nn.TransformerEncoderLayer`,
    ``norm_first``; feed-forward width H, as in the paper) → LayerNorm → hidden states h [B, T, H].
    The score of item i after position t is ``h[t] · E[i]`` (input and output embeddings shared).

Training (:func:`fit`)
    Next-item prediction at every position of chapter 2's ``split.train`` sequences (leave-last-two-out:
    no user's valid or test item is ever an input or a target; :func:`training_windows` builds the
    batches from ``split.train`` only and :func:`check_windows` re-checks every token's position).
    Sequences longer than ``max_len + 1`` are cut into windows from the end, right-padded, positions
    counted from the window's start (so a window is scored like a history of that length).
    Loss: sampled softmax cross-entropy — the target against ``negatives`` items drawn uniformly per
    batch and shared by its positions (a draw equal to a position's target is masked out), or the full
    softmax over all V items when ``negatives`` is 0 or ≥ V − 1. With a uniform proposal the sampled
    softmax needs no log-q correction, so it ranks like the full softmax at a cost of ``negatives``
    instead of V dot products per position (the full softmax over Games' 17k items costs ~20× the
    transformer's FLOPs per position). Not the paper's binary cross-entropy with one negative:
    Klenitskiy & Vasilev (RecSys 2023) show a softmax over many items trains SASRec faster and better.
    Adam (β₂ = 0.98), ``epochs`` passes; after each epoch the model is scored on validation users (the
    second-to-last item, full ranking over all items the user has not seen, NDCG@10) and the best epoch's
    weights are kept — never the test users.

Cache and resumption
    Weights live at ``cache_dir()/itemid/<dataset>-<key>.pt``; ``key`` hashes the sizes, the seed, the
    data fingerprint and the source of this module (:func:`weights_key`), so one key names one training
    run. While training, a checkpoint (model, optimiser, best weights so far, log, torch RNG state) is
    written atomically to ``<...>.pt.partial`` after every epoch; a killed run resumes from the last
    completed epoch and, with the same threads and torch build, ends with bitwise the same weights as an
    uninterrupted one (tested).

The reference ranker ``ref-itemid`` (:class:`ItemIdReference`) is this model in the runner: its
parameters (``itemid_hidden`` ...) default to the profile's ``itemid`` section and enter the record key,
and this module's source is part of that key, so a record is stale whenever its weights would be.

>>> runner = Runner("ci")  # doctest: +SKIP
>>> res = runner.run(EvalConfig("ml-100k", "ref-itemid", n_users=200))  # doctest: +SKIP
>>> res["metrics"]["score"]["NDCG@10"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from lrgd.config import ItemIdSizes, cache_dir
from lrgd.errors import ConfigError, DataError, ModelError
from lrgd.rec.references import register_reference
from lrgd.results import code_hash, content_key, save_torch

#: validation users scored after every epoch to choose the kept weights (a seeded sample when more)
VALID_USERS = 5000
#: windows sorted by length inside each chunk of this many batches (less padding, still shuffled)
SORT_CHUNK = 50
#: uniform negatives per batch of the sampled softmax (the profile's ``itemid.negatives``)
NEGATIVES = ItemIdSizes.negatives


# ----------------------------------------------------------------------------- the training spec


@dataclass(frozen=True)
class Spec:
    """Everything that shapes the trained weights (the weights key hashes it with the data and code)."""

    dataset: str
    hidden: int = ItemIdSizes.hidden
    layers: int = ItemIdSizes.layers
    heads: int = ItemIdSizes.heads
    max_len: int = ItemIdSizes.max_len
    dropout: float = ItemIdSizes.dropout
    epochs: int = ItemIdSizes.epochs
    batch: int = ItemIdSizes.batch
    lr: float = ItemIdSizes.lr
    negatives: int = NEGATIVES
    seed: int = 0
    valid_users: int = VALID_USERS

    @classmethod
    def from_sizes(cls, dataset: str, sizes: ItemIdSizes, seed: int = 0, **overrides) -> Spec:
        """The spec of ``sizes`` (a profile's ``itemid`` section; ``datasets`` and ``threads`` do not
        shape the weights and are left out)."""
        names = {f.name for f in fields(cls)}
        base = {k: v for k, v in asdict(sizes).items() if k in names}
        return cls(dataset, **{**base, "seed": seed, **overrides}).validate()

    def validate(self) -> Spec:
        ItemIdSizes(hidden=self.hidden, layers=self.layers, heads=self.heads, max_len=self.max_len,
                    epochs=self.epochs, batch=self.batch).validate()  # fmt: skip
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"itemid dropout must lie in [0, 1), got {self.dropout}")
        if not self.lr > 0:
            raise ConfigError(f"itemid lr must be > 0, got {self.lr}")
        if self.valid_users < 1 or self.seed < 0 or self.negatives < 0:
            raise ConfigError("itemid valid_users must be ≥ 1, negatives ≥ 0 (0: full softmax) and seed ≥ 0")
        return self


# ----------------------------------------------------------------------------- data


def item_index(ds) -> dict[str, int]:
    """Item id → row of the embedding (1..V in item-file order; 0 is padding)."""
    return {item: k + 1 for k, item in enumerate(ds.items)}


@dataclass(frozen=True)
class Windows:
    """Training windows, right-padded with 0.

    ``inputs`` [n, max_len] and ``targets`` [n, max_len] are item rows (``targets[j, t]`` follows
    ``inputs[j, t]``; 0 where there is none); ``users`` [n] names each window's user and ``starts`` [n]
    the position of its first input in that user's training sequence (what :func:`check_windows` reads).
    """

    inputs: np.ndarray
    targets: np.ndarray
    users: tuple[str, ...]
    starts: np.ndarray

    @cached_property
    def lengths(self) -> np.ndarray:
        """Transitions in each window [n]."""
        return (self.targets > 0).sum(1)

    @property
    def n_tokens(self) -> int:
        """Predicted positions (one per training transition)."""
        return int(self.lengths.sum())


def training_windows(train: Mapping[str, Sequence[str]], index: Mapping[str, int], max_len: int) -> Windows:
    """Windows of at most ``max_len`` transitions from each user's *training* sequence (``split.train``:
    the valid and test items are not in it), cut from the end so the latest items keep the most context.

    >>> w = training_windows({"u": ["a", "b", "c", "d"]}, {"a": 1, "b": 2, "c": 3, "d": 4}, max_len=2)
    >>> w.inputs.tolist(), w.targets.tolist(), w.starts.tolist()
    ([[2, 3], [1, 0]], [[3, 4], [2, 0]], [1, 0])
    """
    inputs, targets, users, starts = [], [], [], []
    for u, seq in train.items():
        rows = [index[i] for i in seq]
        end = len(rows) - 1  # transitions (rows[t] → rows[t + 1]) for t < end
        while end > 0:
            start = max(0, end - max_len)
            x, y = np.zeros(max_len, np.int64), np.zeros(max_len, np.int64)
            x[: end - start], y[: end - start] = rows[start:end], rows[start + 1 : end + 1]
            inputs.append(x), targets.append(y), users.append(u), starts.append(start)
            end = start
    if not inputs:
        raise DataError("no training transitions: every training sequence has a single item")
    return Windows(np.stack(inputs), np.stack(targets), tuple(users), np.array(starts, np.int64))


def check_windows(w: Windows, split, index: Mapping[str, int]) -> None:
    """Raise :class:`DataError` unless every token of ``w`` is its user's *training* item at its position:
    an input at position p < len(train) − 1 and its target at p + 1 < len(train), so no valid or test
    item (positions len(train) and len(train) + 1 of the full sequence) is ever read or predicted."""
    for j, u in enumerate(w.users):
        train = [index[i] for i in split.train.get(u, ())]
        n = int(w.lengths[j])
        s = int(w.starts[j])
        if s + n + 1 > len(train) or list(w.inputs[j, :n]) != train[s : s + n] or \
                list(w.targets[j, :n]) != train[s + 1 : s + n + 1] or w.inputs[j, n:].any():  # fmt: skip
            raise DataError(
                f"training window {j} of user {u!r} is not a slice of the user's training sequence "
                "(a held-out valid/test item would leak into training)"
            )


def batches(w: Windows, batch: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Indices of each batch of one epoch: a random permutation, sorted by length within chunks of
    :data:`SORT_CHUNK` batches (so a batch pads little), batches in random order."""
    order = rng.permutation(len(w.inputs))
    lengths = w.lengths
    out = []
    for a in range(0, len(order), batch * SORT_CHUNK):
        chunk = order[a : a + batch * SORT_CHUNK]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[b : b + batch] for b in range(0, len(chunk), batch)]
    for k in rng.permutation(len(out)):
        yield out[k]


# ----------------------------------------------------------------------------- the model


class SASRec(nn.Module):
    """Causal self-attention over item ids; ``n_items`` real items (rows 1..n_items), row 0 padding."""

    def __init__(self, n_items: int, spec: Spec) -> None:
        super().__init__()
        h = spec.hidden
        self.max_len = spec.max_len
        self.item = nn.Embedding(n_items + 1, h, padding_idx=0)
        self.pos = nn.Embedding(spec.max_len, h)
        self.drop = nn.Dropout(spec.dropout)
        block = nn.TransformerEncoderLayer(
            h, spec.heads, dim_feedforward=h, dropout=spec.dropout, activation="gelu", batch_first=True,
            norm_first=True,
        )  # fmt: skip
        self.blocks = nn.TransformerEncoder(block, spec.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(h)
        for emb in (self.item, self.pos):  # GPT-2's initialisation for tied embeddings
            nn.init.normal_(emb.weight, std=0.02)
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states [B, T, H] of item rows ``seq`` [B, T] (right-padded; T ≤ max_len)."""
        t = seq.shape[1]
        x = self.drop(self.item(seq) + self.pos(torch.arange(t, device=seq.device)))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=seq.device)
        return self.norm(self.blocks(x, mask=mask, is_causal=True))

    def loss(self, h: torch.Tensor, targets: torch.Tensor, negatives: np.ndarray | None) -> torch.Tensor:
        """Mean cross-entropy of item rows ``targets`` [T] after hidden states ``h`` [T, H]: against the
        shared ``negatives`` [n] (item rows; a draw equal to the target is masked), or against every item
        when ``negatives`` is None."""
        if negatives is None:
            return nn.functional.cross_entropy(self.item_logits(h), targets - 1)
        neg = torch.from_numpy(negatives)
        pos = (h * self.item(targets)).sum(-1, keepdim=True)  # [T, 1]
        other = (h @ self.item.weight[neg].T).masked_fill(neg[None, :] == targets[:, None], -math.inf)
        logits = torch.cat([pos, other], 1)
        return nn.functional.cross_entropy(logits, torch.zeros(len(h), dtype=torch.long))

    def item_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Scores [..., n_items] of every real item after hidden states ``h`` [..., H] (column j: row j+1)."""
        return h @ self.item.weight[1:].T


# ----------------------------------------------------------------------------- validation


def valid_users(split, n: int, seed: int) -> list[str]:
    """Up to ``n`` validation users (a seeded sample when there are more, in split order)."""
    users = list(split.valid)
    if len(users) > n:
        keep = np.sort(np.random.default_rng([seed, 11]).choice(len(users), size=n, replace=False))
        users = [users[k] for k in keep]
    return users


def rows_of(ids: Sequence[str], index: Mapping[str, int]) -> list[int]:
    """Embedding rows of item ``ids``; :class:`DataError` for an id the model was not built with."""
    missing = [i for i in ids if i not in index]
    if missing:
        raise DataError(f"item {missing[0]!r} is not in the dataset the item-id model was trained on")
    return [index[i] for i in ids]


def last_window(history: Sequence[str], index: Mapping[str, int], max_len: int) -> list[int]:
    """Embedding rows of the last ``max_len`` items of ``history``."""
    return rows_of(history[-max_len:], index)


@torch.no_grad()
def last_hidden(model: SASRec, windows: Sequence[Sequence[int]], chunk: int = 512) -> torch.Tensor:
    """Hidden state [n, H] after the last item of each of ``windows`` (item rows, each ≤ max_len)."""
    model.eval()
    out = []
    for a in range(0, len(windows), chunk):
        part = windows[a : a + chunk]
        lengths = torch.tensor([len(r) for r in part])
        seq = torch.zeros(len(part), int(lengths.max()), dtype=torch.long)
        for j, r in enumerate(part):
            seq[j, : len(r)] = torch.tensor(r)
        h = model(seq)
        out.append(h[torch.arange(len(part)), lengths - 1])
    return torch.cat(out)


@torch.no_grad()
def valid_ndcg(model: SASRec, split, index: Mapping[str, int], users: Sequence[str], k: int = 10) -> float:
    """Mean NDCG@k of the validation item over full rankings of every item the user has not seen
    (the user's training items are removed from the ranking, the target kept)."""
    windows = [last_window(split.valid[u][0], index, model.max_len) for u in users]
    h = last_hidden(model, windows)
    total = 0.0
    for a in range(0, len(users), 512):
        scores = model.item_logits(h[a : a + 512])
        for j, u in enumerate(users[a : a + 512]):
            hist, target = split.valid[u]
            t = index[target] - 1
            s = scores[j]
            s[[index[i] - 1 for i in hist if i != target]] = -math.inf
            rank = int((s > s[t]).sum()) + 1
            total += 1 / math.log2(rank + 1) if rank <= k else 0.0
    return total / len(users)


# ----------------------------------------------------------------------------- training


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def weights_key(spec: Spec, fingerprint: str) -> str:
    """Hash (16 hex) of the spec, the data fingerprint and this module's source."""
    return content_key({"spec": asdict(spec), "data": fingerprint, "code": code_hash(__name__)})


def weights_path(spec: Spec, fingerprint: str) -> Path:
    """Where the trained weights of (spec, data, code) are cached (``.partial`` beside it while training)."""
    return cache_dir() / "itemid" / f"{spec.dataset}-{weights_key(spec, fingerprint)}.pt"


@dataclass
class Trained:
    """A trained item-id model, its item index, and its training log.

    ``log``: ``loss`` [epochs] (mean training cross-entropy per epoch), ``valid_ndcg`` [epochs],
    ``seconds`` [epochs] (wall time of each epoch, validation included), ``tokens`` (predicted positions
    per epoch), ``best_epoch`` (1-based; the kept weights), ``valid_users``.
    """

    model: SASRec
    index: dict[str, int]
    spec: Spec
    log: dict
    path: Path
    from_cache: bool

    @property
    def train_seconds(self) -> float:
        return float(sum(self.log["seconds"]))

    @torch.no_grad()
    def score(self, history: Sequence[str], candidates: Sequence[str]) -> np.ndarray:
        """Scores [N] of ``candidates`` after the last ``max_len`` items of ``history`` (one forward, on
        one thread: a single short sequence gains nothing from more, and loses much on a busy CPU)."""
        if not history:
            raise DataError("the item-id model needs a non-empty history to score candidates")
        with torch_threads(1):
            h = last_hidden(self.model, [last_window(history, self.index, self.spec.max_len)])[0]
            rows = torch.tensor(rows_of(candidates, self.index))
            return (self.model.item.weight[rows] @ h).double().numpy()


def _read_blob(path: Path) -> dict | None:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # torn, truncated or foreign
        return None
    return blob if isinstance(blob, dict) else None


def fit(
    spec: Spec,
    ds,
    split,
    threads: int = 1,
    quiet: bool = False,
    stop_after: int | None = None,
) -> Trained | None:
    """The trained model of ``spec`` on ``split`` (from the cache, else trained now and cached).

    Resumes from ``<weights>.partial`` when an earlier run was stopped. ``stop_after``: stop after that
    many *new* epochs, leaving the checkpoint as a killed run would, and return None (tests).
    """
    spec = spec.validate()
    fingerprint = ds.fingerprint()
    path = weights_path(spec, fingerprint)
    key = weights_key(spec, fingerprint)
    index = item_index(ds)
    if path.is_file():
        blob = _read_blob(path)
        if blob is None or blob.get("key") != key:
            raise ModelError(f"cached item-id weights {path} cannot be read; delete the file to retrain")
        with torch.random.fork_rng():  # the initialisation is overwritten; keep the caller's RNG as it was
            model = SASRec(len(index), spec)
        model.load_state_dict(blob["state"])
        model.eval()
        return Trained(model, index, spec, blob["log"], path, True)
    windows = training_windows(split.train, index, spec.max_len)
    check_windows(windows, split, index)
    users = valid_users(split, spec.valid_users, spec.seed)
    partial = path.with_name(path.name + ".partial")
    with torch_threads(threads), torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = SASRec(len(index), spec)
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), fused=True)
        state = {"epoch": 0, "best": None, "log": {"loss": [], "valid_ndcg": [], "seconds": []}}
        blob = _read_blob(partial) if partial.is_file() else None
        if blob is not None and blob.get("key") == key:
            model.load_state_dict(blob["model"])
            opt.load_state_dict(blob["optim"])
            torch.set_rng_state(blob["torch_rng"])
            state = {k: blob[k] for k in ("epoch", "best", "log")}
        elif partial.is_file():
            print(f"{partial}: unreadable or another configuration's checkpoint; training from the start",
                  file=sys.stderr)  # fmt: skip
        new = 0
        while state["epoch"] < spec.epochs:
            if stop_after is not None and new >= stop_after:
                return None
            _epoch(model, opt, windows, spec, state, users, split, index, quiet)
            new += 1
            ckpt = {"key": key, "model": model.state_dict(), "optim": opt.state_dict(),
                    "torch_rng": torch.get_rng_state(), **state}  # fmt: skip
            save_torch(ckpt, partial)
    log = {**state["log"], "tokens": windows.n_tokens, "best_epoch": state["best"]["epoch"],
           "valid_users": len(users)}  # fmt: skip
    parts = {"spec": asdict(spec), "data": fingerprint, "code": code_hash(__name__)}
    save_torch({"key": key, "key_parts": parts, "state": state["best"]["state"], "log": log}, path)
    partial.unlink(missing_ok=True)
    model.load_state_dict(state["best"]["state"])
    model.eval()
    return Trained(model, index, spec, log, path, False)


def _epoch(model, opt, windows: Windows, spec: Spec, state: dict, users, split, index, quiet: bool) -> None:
    """One pass over ``windows``, then the validation score; updates ``state`` (epoch, best, log)."""
    from tqdm.std import tqdm  # lrgd.progress's style, with the loss and tokens/s on the bar

    epoch = state["epoch"]
    rng = np.random.default_rng([spec.seed, epoch])
    n_batches = math.ceil(len(windows.inputs) / spec.batch)
    bar = tqdm(total=n_batches, desc=f"{spec.dataset} itemid epoch {epoch + 1}/{spec.epochs}",
               file=sys.stderr, ascii=True, mininterval=2.0, ncols=100, disable=quiet)  # fmt: skip
    model.train()
    t0 = time.perf_counter()
    total, tokens = 0.0, 0
    for idx in batches(windows, spec.batch, rng):
        width = int(windows.lengths[idx].max())
        x = torch.from_numpy(windows.inputs[idx, :width])
        y = torch.from_numpy(windows.targets[idx, :width])
        keep = y > 0
        h = model(x)[keep]  # [tokens, H]: only positions that have a next item
        n_items = model.item.num_embeddings - 1
        sampled = 0 < spec.negatives < n_items - 1
        loss = model.loss(h, y[keep], rng.integers(1, n_items + 1, spec.negatives) if sampled else None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n = int(keep.sum())
        total, tokens = total + loss.item() * n, tokens + n
        bar.update(1)
        bar.set_postfix(loss=f"{total / tokens:.3f}", tok_s=f"{tokens / (time.perf_counter() - t0):.0f}",
                        refresh=False)  # fmt: skip
    bar.close()
    ndcg = valid_ndcg(model, split, index, users)
    state["epoch"] = epoch + 1
    log = state["log"]
    log["loss"].append(total / tokens)
    log["valid_ndcg"].append(ndcg)
    log["seconds"].append(time.perf_counter() - t0)
    if state["best"] is None or ndcg > state["best"]["ndcg"]:
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["best"] = {"epoch": epoch + 1, "ndcg": ndcg, "state": weights}
    if not quiet:
        speed = tokens / log["seconds"][-1]
        print(f"{spec.dataset} itemid epoch {epoch + 1}: loss {total / tokens:.4f}, "
              f"valid NDCG@10 {ndcg:.4f}, {speed:.0f} tokens/s", file=sys.stderr)  # fmt: skip


# ----------------------------------------------------------------------------- the reference ranker


def _help(what: str) -> dict:
    return {"help": f"item-id model: {what}"}


@register_reference("ref-itemid")
class ItemIdReference:
    """The item-id sequential recommender (SASRec, k = 0) trained on the dataset's training split; scores
    are the model's next-item logits after the user's last ``itemid_max_len`` items."""

    itemid_hidden: int = field(default=ItemIdSizes.hidden, metadata=_help("hidden width"))
    itemid_layers: int = field(default=ItemIdSizes.layers, metadata=_help("self-attention blocks"))
    itemid_heads: int = field(default=ItemIdSizes.heads, metadata=_help("attention heads"))
    itemid_max_len: int = field(default=ItemIdSizes.max_len, metadata=_help("items read (latest)"))
    itemid_dropout: float = field(default=ItemIdSizes.dropout, metadata=_help("dropout"))
    itemid_epochs: int = field(default=ItemIdSizes.epochs, metadata=_help("training epochs"))
    itemid_batch: int = field(default=ItemIdSizes.batch, metadata=_help("windows per batch"))
    itemid_lr: float = field(default=ItemIdSizes.lr, metadata=_help("Adam learning rate"))
    itemid_negatives: int = field(default=NEGATIVES, metadata=_help("sampled negatives (0: full softmax)"))
    #: every field takes the profile's ``itemid`` value
    profile_defaults: ClassVar[dict[str, str]] = {
        f"itemid_{n}": f"itemid.{n}" for n in ("hidden", "layers", "heads", "max_len", "dropout", "epochs",
                                               "batch", "lr", "negatives")
    }  # fmt: skip

    def spec(self, dataset: str, seed: int = 0) -> Spec:
        return Spec(dataset, hidden=self.itemid_hidden, layers=self.itemid_layers, heads=self.itemid_heads,
                    max_len=self.itemid_max_len, dropout=self.itemid_dropout, epochs=self.itemid_epochs,
                    batch=self.itemid_batch, lr=self.itemid_lr, negatives=self.itemid_negatives,
                    seed=seed)  # fmt: skip

    def validate(self) -> None:
        try:
            self.spec("any").validate()
        except ConfigError as exc:  # name the options
            raise ConfigError(f"{exc} (options --itemid-hidden, --itemid-heads, ...)") from None

    def trained(self, runner, cfg) -> Trained:
        """The model for ``cfg``'s dataset and seed, trained once (cached on disk and in the runner)."""
        st = runner.data(cfg.dataset)
        spec = self.spec(cfg.dataset, cfg.seed)
        threads = runner.profile.itemid.threads
        return runner.memo(("itemid", cfg.dataset, st.fingerprint, spec),
                           lambda: fit(spec, st.ds, st.split, threads, quiet=runner.quiet))  # fmt: skip

    def score_with(self, runner, cfg, user: str, history: Sequence[str], candidates: Sequence[str]):
        return self.trained(runner, cfg).score(history, candidates)

    def score(self, stats, user, history, candidates):  # pragma: no cover - the runner calls score_with
        raise ConfigError("ref-itemid scores through the runner (score_with): it needs a trained model")

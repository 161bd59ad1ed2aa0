"""Dataset adapters: every source format → one in-memory :class:`Dataset`.

A :class:`Dataset` holds item titles and, per user, the full chronologically ordered item sequence.
:func:`leave_one_out` splits it (last item → test, second-to-last → valid) and :func:`sample_candidates`
draws a seeded candidate list around a target. One small parser per source format; ids stay the dataset's
own ids as strings. Folders are found by :func:`lrgd.config.find_dataset_dir`; data/README.md says where
each dataset comes from. Nothing is cached on disk.
"""

from __future__ import annotations

import ast
import csv
import hashlib
import html
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from lrgd.config import find_dataset_dir
from lrgd.errors import DataError

DATASETS = ("amazon-beauty", "amazon-toys", "amazon-games", "amazon-scientific", "ml-100k")

# Titles that are not real titles: empty, "nan"-like, TransRec's "title_<n>", ml-100k's "unkonwn".
_PLACEHOLDER = re.compile(r"(nan|none|null|unknown|unkonwn|title_\d+)", re.IGNORECASE)
_FETCH = "see data/README.md for how to obtain it"


# ----------------------------------------------------------------------------- containers


@dataclass(frozen=True)
class Item:
    """One catalogue item. ``has_title`` is False for missing/placeholder titles: never show those."""

    id: str
    title: str
    categories: tuple[str, ...] = ()
    has_title: bool = True


@dataclass
class Dataset:
    """Items by id and, per user, the full chronologically ordered sequence of item ids."""

    name: str
    items: dict[str, Item]
    sequences: dict[str, list[str]]
    source: Path
    #: ids used in sequences but absent from the item file (kept, with ``has_title=False``)
    unknown_items: tuple[str, ...] = field(default=())
    #: per user, the time (seconds since the epoch) of each item of ``sequences[user]``, aligned with it;
    #: None for datasets without timestamps (the Amazon sets). Not part of :meth:`fingerprint`.
    timestamps: dict[str, list[float]] | None = None

    @cached_property
    def titled_ids(self) -> tuple[str, ...]:
        """Ids of items with a real title, in item-file order (computed once; do not mutate ``items``)."""
        return tuple(i for i, it in self.items.items() if it.has_title)

    def title(self, item_id: str) -> str:
        """The cleaned title; DataError for an unknown id or an item without a real title."""
        item = self.items.get(item_id)
        if item is None:
            raise DataError(f"{self.name}: unknown item id {item_id!r}")
        if not item.has_title:
            raise DataError(
                f"{self.name}: item {item_id!r} has no real title; it must not be shown to a model"
            )
        return item.title

    def title_twins(self) -> dict[str, tuple[str, ...]]:
        """Titles shared by two or more titled items → their ids (in item-file order).

        A model sees titles, not ids: a leakage guard must compare titles too.
        """
        ids: dict[str, list[str]] = {}
        for i, it in self.items.items():
            if it.has_title:
                ids.setdefault(it.title, []).append(i)
        return {t: tuple(v) for t, v in ids.items() if len(v) > 1}

    def fingerprint(self) -> str:
        """sha256 (16 hex) of the name, the sequences and the titles: a changed data file changes it.

        Categories are not hashed (nothing downstream of the loader reads them).
        """
        h = hashlib.sha256(self.name.encode())
        for u, s in self.sequences.items():
            h.update(f"{u}:{' '.join(s)}\n".encode())
        for i, it in self.items.items():
            h.update(f"{i}\t{it.title}\t{int(it.has_title)}\n".encode())
        return h.hexdigest()[:16]

    def stats(self) -> dict[str, float]:
        """Counts and history-length statistics over the sequences."""
        lengths = np.array([len(s) for s in self.sequences.values()], dtype=np.int64)
        used = {i for s in self.sequences.values() for i in s}
        n_users, n_items, n_inter = len(lengths), len(used), int(lengths.sum()) if len(lengths) else 0
        untitled = sum(1 for i in used if not self.items[i].has_title)
        return {
            "users": n_users,
            "items": n_items,  # distinct items that occur in sequences
            "catalog": len(self.items),  # rows of the item table (+ unknown ids)
            "interactions": n_inter,
            "density": n_inter / (n_users * n_items) if n_users and n_items else 0.0,
            "mean_len": float(lengths.mean()) if n_users else 0.0,
            "median_len": float(np.median(lengths)) if n_users else 0.0,
            "min_len": int(lengths.min()) if n_users else 0,
            "max_len": int(lengths.max()) if n_users else 0,
            "untitled": untitled,
            "untitled_share": untitled / n_items if n_items else 0.0,
        }


@dataclass(frozen=True)
class Split:
    """Leave-one-out split. ``skipped`` counts users with fewer than 3 items (left out of all three)."""

    train: dict[str, list[str]]
    valid: dict[str, tuple[list[str], str]]
    test: dict[str, tuple[list[str], str]]
    skipped: int = 0


# ----------------------------------------------------------------------------- helpers


def clean_title(raw: str) -> str:
    """Unescape HTML entities, collapse whitespace, strip."""
    return " ".join(html.unescape(raw).split())


def make_item(item_id: str, raw_title: str, categories: tuple[str, ...] = (), has_title: bool = True) -> Item:
    """Build an :class:`Item` with a cleaned title; placeholders get ``has_title=False``."""
    title = clean_title(raw_title)
    real = has_title and bool(title) and not _PLACEHOLDER.fullmatch(title)
    return Item(item_id, title, tuple(c for c in map(clean_title, categories) if c), real)


def _fail(path: Path, line: int, expected: str, found: str) -> DataError:
    found = found if len(found) <= 120 else found[:117] + "..."
    return DataError(f"{path}:{line}: expected {expected}, found {found!r}")


def _read_text(path: Path) -> str:
    """The whole file decoded as UTF-8, or a DataError naming the file (and the line and byte) and the fix."""
    if path.is_dir():
        raise DataError(f"{path} is a directory, expected a data file; move it away ({_FETCH})")
    if not path.exists():
        raise DataError(f"missing file {path}; {_FETCH}")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the file's permissions") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{path}:{line}: invalid UTF-8 at byte offset {e.start} ({raw[e.start : e.start + 1]!r}); "
            "re-save the file as UTF-8 or fetch it again"
        ) from None


def _no_rows(path: Path, header: str | None) -> DataError:
    after = " after the header" if header is not None else ""
    return DataError(f"{path}: no data lines{after} (empty file?); {_FETCH}")


def _lines(path: Path, header: str | None = None) -> Iterator[tuple[int, str]]:
    """Yield (line number, line) of a text file, skipping blank lines and checking an optional header.

    A file with no data line (empty, or a header only) is a DataError naming it.
    """
    rows = 0
    for n, line in enumerate(io.StringIO(_read_text(path), newline=None), 1):
        line = line.rstrip("\r\n")
        if n == 1 and header is not None:
            if line != header:
                raise _fail(path, 1, f"header {header!r}", line)
            continue
        if line.strip():
            rows += 1
            yield n, line
    if rows == 0:
        raise _no_rows(path, header)


def _add_item(items: dict[str, Item], item: Item, path: Path, line: int) -> None:
    """Insert ``item``; a repeated id is a DataError (a silent "later copy wins" would change targets)."""
    old = items.get(item.id)
    if old is not None:
        also = "" if old.title == item.title else f" with another title ({old.title!r} vs {item.title!r})"
        raise _fail(path, line, "each item id once", f"repeated item {item.id}{also}")
    items[item.id] = item


def _read_token_sequences(path: Path, what: str) -> dict[str, list[str]]:
    """``<user> <item> <item> ...`` per line (P5/GRAM/TransRec style)."""
    seqs: dict[str, list[str]] = {}
    for n, line in _lines(path):
        parts = line.split()
        if len(parts) < 2:
            raise _fail(path, n, f"'<user> <{what}> ...' with at least one item", line)
        if parts[0] in seqs:
            raise _fail(path, n, "each user once", f"repeated user {parts[0]}")
        seqs[parts[0]] = parts[1:]
    return seqs


def _int_token(path: Path, n: int, token: str, what: str) -> str:
    if not token.isdigit():
        raise _fail(path, n, f"an integer {what}", token)
    return token


def _finish(name: str, items: dict[str, Item], seqs: dict[str, list[str]], source: Path) -> Dataset:
    """Add unknown sequence ids as untitled items and build the Dataset."""
    unknown = sorted({i for s in seqs.values() for i in s if i not in items})
    for i in unknown:
        items[i] = Item(i, "", (), has_title=False)
    return Dataset(name, items, seqs, source, tuple(unknown))


# ----------------------------------------------------------------------------- adapters


def _load_beauty(folder: Path) -> Dataset:
    """Amazon Beauty 2014 5-core: 22,363 users, 12,101 items, 198,502 interactions; 7 items have empty titles.

    ``user_sequence.txt`` (``<reviewerID> <asin> ...``, chronological) + RecBole ``Amazon_Beauty.item``
    (tab-separated, CSV-quoted, a title may span two lines). Item ids are ASINs.
    """
    seqs = _read_token_sequences(folder / "user_sequence.txt", "asin")
    path = folder / "Amazon_Beauty.item"
    items: dict[str, Item] = {}
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), delimiter="\t")
    header = next(reader, [])
    need = ["item_id:token", "title:token", "categories:token_seq"]
    if any(h not in header for h in need):
        raise _fail(path, 1, f"a header with {need}", "\t".join(header))
    col_id, col_title, col_cat = (header.index(h) for h in need)
    for row in reader:
        if not row:
            continue
        if len(row) != len(header):
            raise _fail(path, reader.line_num, f"{len(header)} tab-separated fields", "\t".join(row))
        cats = row[col_cat]
        try:  # "'Beauty', 'Fragrance', \"Women's\"" is a Python literal list without brackets
            parsed = ast.literal_eval(f"[{cats}]") if cats else []
        except (ValueError, SyntaxError):
            raise _fail(path, reader.line_num, "categories like \"'A', 'B'\"", cats) from None
        item = make_item(row[col_id], row[col_title], tuple(map(str, parsed)))
        _add_item(items, item, path, reader.line_num)
    if not items:
        raise _no_rows(path, "\t".join(header))
    return _finish("amazon-beauty", items, seqs, folder)


def _load_toys(folder: Path) -> Dataset:
    """Amazon Toys_and_Games 2014 5-core: 19,412 users, 11,924 items, 167,597 interactions.

    59 items have placeholder titles ``title_<n>`` (``has_title`` 0).

    ``sequential_data.txt`` (TransRec integer ids; users 1..19412, items 0..11923) joined with
    ``items_joined.tsv`` whose ``item_id`` column is that same integer id (``asin`` maps it back to
    ``user_sequence_asin.txt``, which is not read). ``categories`` is a JSON list of paths, flattened here.
    """
    seqs = _read_token_sequences(folder / "sequential_data.txt", "item_int")
    path = folder / "items_joined.tsv"
    items: dict[str, Item] = {}
    for n, line in _lines(path, header="item_id\tasin\ttitle\thas_title\tcategories"):
        parts = line.split("\t")
        if len(parts) != 5 or parts[3] not in ("0", "1"):
            raise _fail(path, n, "5 tab-separated fields: item_id asin title has_title(0|1) categories", line)
        item_id = _int_token(path, n, parts[0], "item_id")
        try:
            paths = json.loads(parts[4])
        except json.JSONDecodeError:
            raise _fail(path, n, "categories as a JSON list of lists", parts[4]) from None
        cats = tuple(dict.fromkeys(c for p in paths for c in p))
        _add_item(items, make_item(item_id, parts[2], cats, has_title=parts[3] == "1"), path, n)
    for u, s in seqs.items():
        for i in s:
            if not i.isdigit():
                raise DataError(
                    f"{folder / 'sequential_data.txt'}: user {u}: expected integer item ids, found {i!r}"
                )
    return _finish("amazon-toys", items, seqs, folder)


def _read_games_inter(path: Path) -> dict[str, tuple[int, list[str], str]]:
    """RecBole ``user_id  item_id_list  item_id`` → user -> (line, history, target)."""
    out: dict[str, tuple[int, list[str], str]] = {}
    for n, line in _lines(path, header="user_id:token\titem_id_list:token_seq\titem_id:token"):
        parts = line.split("\t")
        if len(parts) != 3 or not parts[1].split() or not parts[2].strip():
            raise _fail(
                path, n, "3 tab-separated fields: user_id, item_id_list (space-separated), item_id", line
            )
        if parts[0] in out:
            raise _fail(path, n, "each user once", f"repeated user {parts[0]}")
        out[parts[0]] = (n, parts[1].split(), parts[2].strip())
    return out


def _load_games(folder: Path) -> Dataset:
    """Amazon Video_Games 2018, LLMRank "Games-6k": 50,546 users, 16,859 items, 440,264 interactions.

    Full sequence = test history + test item (length 5..50). ``Games-6k.valid.inter`` is required and must
    list the same users, each with the test sequence minus its last item; a mismatch is a DataError.
    """
    path = folder / "Games-6k.item"
    items: dict[str, Item] = {}
    for n, line in _lines(path, header="item_id:token\ttitle:token_seq"):
        parts = line.split("\t")
        if len(parts) != 2:
            raise _fail(path, n, "2 tab-separated fields: item_id, title", line)
        _add_item(items, make_item(parts[0], parts[1]), path, n)
    tpath, vpath = folder / "Games-6k.test.inter", folder / "Games-6k.valid.inter"
    test = _read_games_inter(tpath)
    seqs = {u: [*hist, target] for u, (_, hist, target) in test.items()}
    valid = _read_games_inter(vpath)
    for u, (n, hist, target) in valid.items():
        if u not in seqs:
            raise _fail(vpath, n, f"only users of {tpath.name}", f"user {u}, absent from {tpath.name}")
        if seqs[u][:-1] != [*hist, target]:
            raise _fail(
                vpath, n, f"user {u}'s test history (valid history + valid item)", f"{hist} + {target}"
            )
    missing = [u for u in seqs if u not in valid]
    if missing:
        raise DataError(
            f"{vpath}: {len(missing)} users of {tpath.name} are missing (first: {missing[0]!r}); "
            f"the two files must list the same users ({_FETCH})"
        )
    return _finish("amazon-games", items, seqs, folder)


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """``object_pairs_hook`` that refuses a key seen twice in one object (json keeps the later copy)."""
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _duplicate_line(text: str, key: str) -> int:
    """Line of the second ``"key":`` in the first JSON object repeating ``key`` (slow pure-Python scan)."""
    found: list[int] = []

    def parse_object(s_and_end, *args, **kwargs):  # json.decoder.JSONObject with positions
        pairs, end = json.decoder.JSONObject(s_and_end, *args, **kwargs)
        if not found and [k for k, _ in pairs].count(key) > 1:
            start = s_and_end[1]
            pattern = re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:"
            hits = list(re.finditer(pattern, text[start:end]))
            found.append(start + hits[1].start() if len(hits) > 1 else start)
        return pairs, end

    dec = json.JSONDecoder(object_pairs_hook=list)
    dec.parse_object = parse_object
    dec.scan_once = json.scanner.py_make_scanner(dec)
    dec.decode(text)
    return text.count("\n", 0, found[0]) + 1 if found else 1


def _load_json(path: Path) -> object:
    """Parse a JSON file; invalid JSON or a key repeated within one object is a DataError with its line."""
    text = _read_text(path)
    try:
        return json.loads(text, object_pairs_hook=_unique_pairs)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: expected valid JSON, found an error: {e.msg}") from None
    except _DuplicateKey as e:
        raise _fail(
            path, _duplicate_line(text, e.key), "each key once per object", f"repeated key {e.key}"
        ) from None


def _load_scientific(folder: Path) -> Dataset:
    """Amazon Industrial_and_Scientific 2018 5-core (LC-Rec): 8,317 users, 4,344 items, 58,492 interactions.

    ``Scientific.inter.json`` ``{"user": [item_int, ...]}`` and
    ``Scientific.item.json`` ``{"item": {"title", "description", "brand", "categories"}}``.
    Every title ends with a "." added by the preprocessing; it is kept.
    """
    ipath, spath = folder / "Scientific.item.json", folder / "Scientific.inter.json"
    raw_items, raw_seqs = _load_json(ipath), _load_json(spath)
    if not isinstance(raw_items, dict) or not isinstance(raw_seqs, dict):
        raise DataError(f"{folder}: expected JSON objects at the top level of both Scientific files")
    for path, raw in ((ipath, raw_items), (spath, raw_seqs)):
        if not raw:
            raise DataError(f"{path}: an empty JSON object, expected one entry per item or user; {_FETCH}")
    items: dict[str, Item] = {}
    for k, v in raw_items.items():
        if not isinstance(v, dict) or not isinstance(v.get("title"), str):
            raise DataError(
                f"{ipath}: item {k!r}: expected an object with a string 'title', found {str(v)[:80]!r}"
            )
        cats = tuple(re.split(r",(?! )", v.get("categories") or "")) if v.get("categories") else ()
        items[k] = make_item(k, v["title"], cats)
    seqs: dict[str, list[str]] = {}
    for u, s in raw_seqs.items():
        if not isinstance(s, list) or not s or not all(isinstance(i, int) for i in s):
            raise DataError(
                f"{spath}: user {u!r}: expected a non-empty list of integer item ids, found {str(s)[:80]!r}"
            )
        seqs[u] = [str(i) for i in s]
    return _finish("amazon-scientific", items, seqs, folder)


def movielens_dir() -> Path:
    """The ``ml-100k`` folder shipped in the installed recbole wheel (recbole is not imported)."""
    from importlib import metadata

    try:
        folder = Path(str(metadata.distribution("recbole").locate_file("recbole/dataset_example/ml-100k")))
    except metadata.PackageNotFoundError:
        raise DataError(
            "ml-100k is read from the recbole wheel: pip install --no-deps recbole==1.2.1"
        ) from None
    if not folder.is_dir():
        raise DataError(f"recbole is installed but {folder} is missing; pip install --no-deps recbole==1.2.1")
    return folder


def _movie(item_id: str, title: str, year: str, genres: tuple[str, ...]) -> Item:
    """An ML-100k item titled ``"<title> (<year>)"`` when the year is four digits, else ``"<title>"``.

    The year tells apart 4 of the 22 titles that two items share (``Cape Fear`` 1962 / 1991); the other
    18 are the same film entered twice (same title and year) and stay twins: see ``title_twins``.
    """
    item = make_item(item_id, title, genres)
    if item.has_title and re.fullmatch(r"\d{4}", year.strip()):
        item = Item(item.id, f"{item.title} ({year.strip()})", item.categories, True)
    return item


def _load_ml100k(folder: Path) -> Dataset:
    """MovieLens 100K (RecBole atomic files): 943 users, 1,682 items, 100,000 ratings (all kept).

    Each user's items are ordered by (timestamp, file row) with a stable sort; ``timestamps`` keeps each
    item's time, aligned with the sequence. Titles carry the release year, ``"Toy Story (1995)"`` (see
    :func:`_movie`). Genres become categories.
    """
    path = folder / "ml-100k.item"
    items: dict[str, Item] = {}
    header = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
    for n, line in _lines(path, header=header):
        parts = line.split("\t")
        if len(parts) != 4:
            raise _fail(path, n, "4 tab-separated fields: item_id, movie_title, release_year, class", line)
        _add_item(items, _movie(parts[0], parts[1], parts[2], tuple(parts[3].split())), path, n)
    path = folder / "ml-100k.inter"
    rows: dict[str, list[tuple[float, int, str]]] = {}
    for n, line in _lines(path, header="user_id:token\titem_id:token\trating:float\ttimestamp:float"):
        parts = line.split("\t")
        try:
            ts = float(parts[3])
        except (IndexError, ValueError):
            raise _fail(
                path, n, "4 tab-separated fields: user_id, item_id, rating, timestamp (number)", line
            ) from None
        rows.setdefault(parts[0], []).append((ts, n, parts[1]))
    users = sorted(rows, key=lambda u: (len(u), u))  # numeric order for integer ids
    ordered = {u: sorted(rows[u]) for u in users}
    ds = _finish("ml-100k", items, {u: [i for _, _, i in r] for u, r in ordered.items()}, folder)
    ds.timestamps = {u: [t for t, _, _ in r] for u, r in ordered.items()}
    return ds


_LOADERS = {
    "amazon-beauty": _load_beauty,
    "amazon-toys": _load_toys,
    "amazon-games": _load_games,
    "amazon-scientific": _load_scientific,
    "ml-100k": _load_ml100k,
}


def load_dataset(name: str, data_dir: Path | None = None) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`).

    ``data_dir`` is a root holding ``<name>/``; without it the folder is found by ``find_dataset_dir``
    ($LRGD_DATA_DIR → data/ → ../shared/data), except ml-100k, read from the recbole wheel.
    """
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if data_dir is not None:
        folder = Path(data_dir) / name
        if not folder.is_dir():
            raise DataError(f"dataset folder {folder} not found; see data/README.md")
    elif name == "ml-100k":
        folder = movielens_dir()
    else:
        folder = find_dataset_dir(name)
    return _LOADERS[name](folder)


def load_games_random_candidates(data_dir: Path | None = None) -> dict[str, list[str]]:
    """LLMRank's fixed lists ``Games-6k.random``: user -> 100 candidate item ids (6,000 users).

    The ground truth is not always among them (LLMRank appends it), and some lists contain items
    from the user's own history.
    """
    folder = Path(data_dir) / "amazon-games" if data_dir is not None else find_dataset_dir("amazon-games")
    path, out = folder / "Games-6k.random", {}
    for n, line in _lines(path):
        parts = line.split("\t")
        if len(parts) != 2 or not parts[1].split():
            raise _fail(path, n, "'<user_id>\\t<space-separated item ids>'", line)
        out[parts[0]] = parts[1].split()
    return out


# ----------------------------------------------------------------------------- splits and candidates


def leave_one_out(ds: Dataset) -> Split:
    """Order-based leave-one-out: test = last item, valid = second-to-last, train = the rest.

    Users with fewer than 3 items are left out and counted in ``Split.skipped``.
    """
    train, valid, test, skipped = {}, {}, {}, 0
    for u, seq in ds.sequences.items():
        if len(seq) < 3:
            skipped += 1
            continue
        train[u] = list(seq[:-2])
        valid[u] = (list(seq[:-2]), seq[-2])
        test[u] = (list(seq[:-1]), seq[-1])
    return Split(train, valid, test, skipped)


def _rng(seed: int, user: str) -> np.random.Generator:
    """A generator seeded by (seed, user), stable across runs and Python versions."""
    return np.random.default_rng([seed, zlib.crc32(user.encode("utf-8"))])


def sample_candidates(
    ds: Dataset, user: str, target: str, history: list[str], n: int = 20, seed: int = 0
) -> list[str]:
    """``target`` plus ``n - 1`` titled items the user never interacted with, in a seeded shuffled order.

    "Interacted" is the user's whole sequence (plus ``history``), so valid/test items are never negatives.
    """
    if n < 1:
        raise DataError(f"n must be at least 1, got {n}")
    if target not in ds.items or not ds.items[target].has_title:
        raise DataError(f"{ds.name}: target {target!r} is unknown or has no title; skip user {user!r}")
    seen = set(ds.sequences.get(user, ())) | set(history) | {target}
    pool = ds.titled_ids
    n_seen = sum(1 for i in seen if i in ds.items and ds.items[i].has_title)
    if len(pool) - n_seen < n - 1:
        raise DataError(
            f"{ds.name}: only {len(pool) - n_seen} unseen titled items for user {user!r}, need {n - 1}"
        )
    rng = _rng(seed, user)
    draw = rng.choice(len(pool), size=min(len(pool), n - 1 + n_seen), replace=False)
    negatives = [pool[k] for k in draw if pool[k] not in seen][: n - 1]
    out = [*negatives, target]
    return [out[k] for k in rng.permutation(len(out))]


# ----------------------------------------------------------------------------- synthetic data


def make_synthetic(
    n_users: int = 20,
    n_items: int = 50,
    seed: int = 0,
    min_len: int = 3,
    max_len: int = 8,
    n_untitled: int = 0,
) -> Dataset:
    """A small random dataset with integer-string ids, so it can be written in every source format.

    The last ``n_untitled`` items get placeholder titles (``has_title=False``).
    """
    if not 1 <= min_len <= max_len <= n_items:
        raise DataError(f"need 1 <= min_len <= max_len <= n_items, got {min_len}, {max_len}, {n_items}")
    rng = np.random.default_rng(seed)
    items = {}
    for k in range(n_items):
        untitled = k >= n_items - n_untitled
        items[str(k)] = make_item(
            str(k), f"title_{k}" if untitled else f"Item {k} {rng.integers(1000)}", (f"cat{k % 3}",)
        )
    seqs = {}
    for u in range(n_users):
        length = int(rng.integers(min_len, max_len + 1))
        seqs[str(u)] = [str(i) for i in rng.choice(n_items, size=length, replace=False)]
    return Dataset("synthetic", items, seqs, Path("<synthetic>"))


def write_synthetic(ds: Dataset, folder: Path, fmt: str) -> Path:
    """Write ``ds`` into ``folder`` in the source format ``fmt`` (a name in DATASETS); return ``folder``.

    Integer-string ids are needed for every format but amazon-beauty. Untitled items are written with an
    empty title (or ``has_title`` 0 / ``title_<id>``), so they load back as untitled.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    seq_lines = [" ".join([u, *s]) + "\n" for u, s in ds.sequences.items()]

    def title(it: Item) -> str:
        return it.title if it.has_title else ""

    if fmt == "amazon-beauty":
        (folder / "user_sequence.txt").write_text("".join(seq_lines), encoding="utf-8")
        with (folder / "Amazon_Beauty.item").open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(["item_id:token", "title:token", "categories:token_seq"])
            for it in ds.items.values():
                w.writerow([it.id, title(it), ", ".join(repr(c) for c in it.categories)])
    elif fmt == "amazon-toys":
        (folder / "sequential_data.txt").write_text("".join(seq_lines), encoding="utf-8")
        rows = ["item_id\tasin\ttitle\thas_title\tcategories\n"]
        for it in ds.items.values():
            t = it.title if it.has_title else f"title_{it.id}"
            rows.append(f"{it.id}\tA{it.id}\t{t}\t{int(it.has_title)}\t{json.dumps([list(it.categories)])}\n")
        (folder / "items_joined.tsv").write_text("".join(rows), encoding="utf-8")
    elif fmt == "amazon-games":
        item_rows = ["item_id:token\ttitle:token_seq\n"] + [
            f"{it.id}\t{title(it)}\n" for it in ds.items.values()
        ]
        (folder / "Games-6k.item").write_text("".join(item_rows), encoding="utf-8")
        header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
        for split, cut in (("test", 1), ("valid", 2)):
            rows = [f"{u}\t{' '.join(s[:-cut])}\t{s[-cut]}\n" for u, s in ds.sequences.items()]
            (folder / f"Games-6k.{split}.inter").write_text(header + "".join(rows), encoding="utf-8")
    elif fmt == "amazon-scientific":
        inter = {u: [int(i) for i in s] for u, s in ds.sequences.items()}
        meta = {
            it.id: {"title": title(it), "description": "", "brand": "", "categories": ",".join(it.categories)}
            for it in ds.items.values()
        }
        (folder / "Scientific.inter.json").write_text(json.dumps(inter), encoding="utf-8")
        (folder / "Scientific.item.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    elif fmt == "ml-100k":
        rows = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"]
        for it in ds.items.values():  # "Heat (1995)" → "Heat", "1995"; no year → "unkonwn" like the source
            m = re.fullmatch(r"(.*) \((\d{4})\)", title(it))
            name, year = (m[1], m[2]) if m else (title(it) or "unkonwn", "unkonwn")
            rows.append(f"{it.id}\t{name}\t{year}\t{' '.join(it.categories)}\n")
        (folder / "ml-100k.item").write_text("".join(rows), encoding="utf-8")
        rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float\n"]
        rows += [f"{u}\t{i}\t4\t{880000000 + t}\n" for u, s in ds.sequences.items() for t, i in enumerate(s)]
        (folder / "ml-100k.inter").write_text("".join(rows), encoding="utf-8")
    else:
        raise DataError(f"unknown format {fmt!r}; choose one of {', '.join(DATASETS)}")
    return folder


if __name__ == "__main__":  # python -m lrgd.rec.data [names...]: print the stats of each dataset
    for name in sys.argv[1:] or DATASETS:
        print(name, load_dataset(name).stats())

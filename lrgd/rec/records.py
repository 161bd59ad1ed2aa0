"""Per-user records on disk: one JSON line per evaluated user, appended as soon as the user is done.

The reader trusts nothing that it reads back. Each line must be a JSON object that

1. carries the configuration key of the condition being read (``"key"``; a line of another condition
   is *foreign*),
2. carries a checksum of its own content (``"check"``, written by :func:`seal`; a hand-edited record is
   *tampered*), and
3. passes the condition's schema (:class:`RecordSchema`: every field present with its type, no
   ``null``, ranks within 1..N, the user's true target; else *invalid*).

A line that is not JSON (a torn write) is *torn*; a user with two records is a *duplicate*: records
that differ only in their timings (two runs on one folder computed the user twice) keep the first, and
records that differ in anything else are both dropped. Bad lines are skipped individually — a torn
line in the middle does not drop the good records after it — counted in :class:`Skipped`, and the file
is rewritten atomically without them, so the runner recomputes exactly those users. The rewrite re-reads
the file under the appenders' lock (:func:`lrgd.results.rewrite_locked`), so a record another process
appends meanwhile is kept; harmless duplicates (equal results) alone cause no rewrite.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from lrgd.results import append_line, rewrite_locked

__all__ = ["RecordSchema", "Skipped", "append_record", "read_records", "seal"]

_NUMBER = (int, float)


def _checksum(record: Mapping) -> str:
    body = {k: v for k, v in record.items() if k != "check"}
    blob = json.dumps(body, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _sealed(rec: dict) -> bool:
    try:
        return rec.get("check") == _checksum(rec)
    except ValueError:  # NaN or infinity: never written by seal()
        return False


#: measured wall-clock fields: they differ between two computations of the same record
TIMINGS = ("seconds", "null_seconds")


def _result(rec: Mapping) -> dict:
    """``rec`` without its timings and checksum: what two computations of one user must agree on."""
    return {k: v for k, v in rec.items() if k not in (*TIMINGS, "check")}


def _problem(rec: dict, problem: Callable[[dict], str | None] | None) -> str | None:
    if not isinstance(rec.get("user"), str):
        return f"user {rec.get('user')!r} is not a string"
    try:
        return None if problem is None else problem(rec)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"


def seal(record: dict, key: str) -> dict:
    """``record`` with its configuration ``key`` and the checksum of its content added."""
    out = {**record, "key": key}
    out["check"] = _checksum(out)
    return out


def append_record(path: Path, record: dict) -> None:
    """Append one (sealed) record as a single write of one complete line, flushed to disk."""
    append_line(path, record)


@dataclass(frozen=True)
class RecordSchema:
    """What a valid record of one condition holds.

    ``fields``: name → type (or tuple of types) every record must carry, besides ``user``, ``target``,
    ``candidates`` and ``rank``; ``variants``: the keys of ``rank``; ``targets``: user → true target id.
    """

    n_candidates: int
    variants: tuple[str, ...]
    targets: Mapping[str, str]
    fields: Mapping[str, type | tuple[type, ...]] = field(default_factory=dict)

    def problem(self, rec: dict) -> str | None:
        """Why ``rec`` is invalid, or ``None``."""
        user = rec.get("user")
        if not isinstance(user, str) or user not in self.targets:
            return f"unknown user {user!r}"
        if rec.get("target") != self.targets[user]:
            return f"user {user}: target {rec.get('target')!r} is not the split's {self.targets[user]!r}"
        cands = rec.get("candidates")
        if not isinstance(cands, list) or len(cands) != self.n_candidates or self.targets[user] not in cands:
            return f"user {user}: candidates are not {self.n_candidates} ids holding the target"
        rank = rec.get("rank")
        if not isinstance(rank, dict) or set(rank) != set(self.variants):
            return f"user {user}: rank must hold {', '.join(self.variants)}"
        for v, r in rank.items():
            if not isinstance(r, int) or isinstance(r, bool) or not 1 <= r <= self.n_candidates:
                return f"user {user}: rank[{v}] = {r!r} is not an integer in 1..{self.n_candidates}"
        for name, kind in self.fields.items():
            value = rec.get(name)
            if (
                value is None
                or not isinstance(value, kind)
                or (kind in (int, _NUMBER) and isinstance(value, bool))
            ):
                return f"user {user}: field {name!r} is {value!r}, expected {_type_name(kind)}"
        return None


def _type_name(kind) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


@dataclass
class Skipped:
    """Lines of a record file that were not used, by reason (each one is recomputed)."""

    torn: int = 0  # not a JSON object: an interrupted write
    foreign: int = 0  # another configuration's key
    tampered: int = 0  # content does not match its checksum
    invalid: int = 0  # fails the schema
    duplicate: int = 0  # a user with two different records (all of them dropped)
    example: str = ""  # the first reason met, for the message

    @property
    def total(self) -> int:
        return self.torn + self.foreign + self.tampered + self.invalid + self.duplicate

    def as_dict(self) -> dict[str, int]:
        return {k: getattr(self, k) for k in ("torn", "foreign", "tampered", "invalid", "duplicate")}

    def __str__(self) -> str:
        parts = [f"{v} {k}" for k, v in self.as_dict().items() if v]
        first = f" (first: {self.example})" if self.example else ""
        return f"skipped {self.total} record line(s): {', '.join(parts)}{first}" if parts else "no bad lines"


def read_records(
    path: Path, key: str, problem: Callable[[dict], str | None] | None = None
) -> tuple[dict[str, dict], Skipped]:
    """The good records of ``path`` by user, and what was skipped (see the module docstring).

    ``problem(rec)`` is the schema check (e.g. :meth:`RecordSchema.problem`). When anything but harmless
    duplicates is skipped the file is rewritten, atomically and under the appenders' lock, with the good
    records only (re-read under the lock: a record appended since the first read is kept).
    """
    path = Path(path)
    if not path.is_file():
        return {}, Skipped()
    good, skipped, benign = _parse(path.read_text(encoding="utf-8", errors="replace"), key, problem)
    if skipped.total > benign:

        def keep_good(raw: str) -> str:  # parsed again under the lock: lines appended meanwhile stay
            kept = _parse(raw, key, problem)[0]
            return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept.values())

        rewrite_locked(path, keep_good)
    return good, skipped


def _parse(
    raw: str, key: str, problem: Callable[[dict], str | None] | None
) -> tuple[dict[str, dict], Skipped, int]:
    """(good records by user, what was skipped, how many skipped lines are harmless duplicates)."""
    skipped, benign = Skipped(), 0
    lines = raw.split("\n")
    by_user: dict[str, list[dict]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            if i == len(lines) - 1:  # no trailing newline: the write did not finish
                raise ValueError
            rec = json.loads(line)
            if not isinstance(rec, dict):
                raise ValueError
        except ValueError:
            skipped.torn += 1
            skipped.example = skipped.example or f"line {i + 1} is not a complete JSON object"
            continue
        reason = None
        if rec.get("key") != key:
            skipped.foreign += 1
            reason = f"line {i + 1} has key {rec.get('key')!r}, not {key!r}"
        elif not _sealed(rec):
            skipped.tampered += 1
            reason = f"line {i + 1} does not match its checksum (edited by hand?)"
        elif (why := _problem(rec, problem)) is not None:
            skipped.invalid += 1
            reason = f"line {i + 1}: {why}"
        if reason:
            skipped.example = skipped.example or reason
        else:
            by_user.setdefault(rec["user"], []).append(rec)
    good = {}
    for user, recs in by_user.items():
        if all(_result(r) == _result(recs[0]) for r in recs):
            good[user] = recs[0]
            skipped.duplicate += len(recs) - 1
            benign += len(recs) - 1
        else:  # which one is right is unknowable: recompute the user
            skipped.duplicate += len(recs)
        if len(recs) > 1:
            skipped.example = skipped.example or f"user {user!r} has {len(recs)} records"
    return good, skipped, benign

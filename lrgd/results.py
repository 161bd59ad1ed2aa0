"""Result files and cache keys: the one atomic writer family and the one hash helper of the library.

Writers
    :func:`atomic_write` (and ``_text`` / ``_json`` / ``_torch`` / ``_npy``) write a temporary file beside
    the target, flush it to disk and rename it into place, so a reader sees the old file or the new one,
    never half of one; :func:`atomic_dir` does the same for a folder. :func:`append_line` appends one
    complete JSON line (one ``write``, flushed and fsynced) for resumable per-user records. Files get the
    mode the user's umask gives (``0o666 & ~umask``), missing parent folders are created, and an
    unwritable folder raises one :class:`~lrgd.errors.ConfigError` naming it.
Keys
    :func:`content_key` hashes canonical JSON (sorted keys); :func:`code_hash` hashes the source text of
    library modules; :func:`cache_key` combines configuration, data fingerprint, weights hash and code
    hash, so a cached result is served only when everything that computed it is unchanged
    (:func:`cached_json`). :func:`file_hash` hashes a file's bytes (model weights).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib
import json
import os
import shutil
import tempfile
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

from lrgd.errors import ConfigError

# ----------------------------------------------------------------------------- writers

_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    """The process umask (read by setting and restoring it; under a lock so threads do not race)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _unwritable(folder: Path, exc: OSError) -> ConfigError:
    return ConfigError(
        f"cannot write results into {folder}: {exc.strerror or exc}. Make that folder writable "
        "(or remove the file that stands in its place), or run from a checkout you can write to."
    )


def _not_a_folder(path: Path) -> None:
    """:class:`ConfigError` naming ``path`` when a folder stands where a result file is to be written."""
    if path.is_dir():
        raise ConfigError(
            f"cannot write {path}: a folder stands in its place; remove that folder (or choose another "
            "results folder)"
        )


def ensure_dir(folder: Path) -> Path:
    """Create ``folder`` (and its parents) if missing; :class:`ConfigError` if that is impossible."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(folder, exc) from exc
    return folder


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, give it the umask's mode and
    rename it onto ``path``. On any failure the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    ensure_dir(path.parent)
    _not_a_folder(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _unwritable(path.parent, exc) from exc
    os.close(fd)
    try:
        write(tmp)
        _fsync(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; results are shared like any file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: Path, obj: object) -> Path:
    """Write ``obj`` as indented JSON (one trailing newline) to ``path`` atomically.

    NaN and infinities are refused (``ValueError``, before anything is written): they usually mean a
    silent failure upstream.
    """
    text = json.dumps(obj, indent=1, ensure_ascii=False, default=str, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def atomic_write_torch(path: Path, obj: object) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (cached weights are never half-written)."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def atomic_write_npy(path: Path, array) -> Path:
    """``numpy.save(array)`` to ``path`` atomically (the file name is kept as given)."""
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array)

    return atomic_write(path, write)


# ----------------------------------------------------------------------------- trained weights, committed


def _copy_file(src: Path, dst: Path) -> None:
    """Copy ``src`` to ``dst`` atomically (a temporary file renamed), creating ``dst``'s folder."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.replace(dst)


def commit_weights(path: Path, models: Path) -> list[Path]:
    """Copy trained weights from the cache (``path``; its resumable checkpoint is ``path`` with the suffix
    ``.partial``) to the folder ``models`` (``results/<profile>/models/``), returning the copies there.

    A cache lives on one machine, and a model trained at ``full`` costs CPU hours: the final weights, or
    mid-training the checkpoint, are committed with the results, so another clone (the next session)
    reuses or resumes them (:func:`restore_weights`). File names carry the weights key (sizes, data,
    seed and the trainer's source), so a copy never stands in for other weights. A finished model's
    committed checkpoint is deleted."""
    final, partial = models / path.name, models / path.with_suffix(".partial").name
    if path.is_file():
        if not final.is_file() or final.read_bytes() != path.read_bytes():
            _copy_file(path, final)
        partial.unlink(missing_ok=True)
    elif path.with_suffix(".partial").is_file():
        _copy_file(path.with_suffix(".partial"), partial)
    return [f for f in (final, partial) if f.is_file()]


def restore_weights(path: Path, models: Path) -> Path | None:
    """Copy committed weights (:func:`commit_weights`) from ``models`` into the cache file ``path`` where the
    cache has none; a committed checkpoint only where the cache has no checkpoint either. Returns the
    cache file written, or None."""
    final, partial = models / path.name, models / path.with_suffix(".partial").name
    if path.is_file():
        return None
    if final.is_file():
        _copy_file(final, path)
        return path
    if partial.is_file() and not path.with_suffix(".partial").is_file():
        _copy_file(partial, path.with_suffix(".partial"))
        return path.with_suffix(".partial")
    return None


@contextlib.contextmanager
def committed_weights(path: Path, profile: str) -> Iterator[None]:
    """Around the load-or-train of the weights cached at ``path``: at a profile other than ``ci``, restore
    a committed copy from ``results/<profile>/models/`` first and commit the weights after (so
    ``git add results/<profile>/models`` carries them to another clone); at ``ci`` (minutes, retrained
    by CI on every clean clone) nothing is copied.

    >>> with committed_weights(td.weights_path(world, sizes, seed), "full"):  # doctest: +SKIP
    ...     decoder = td.load_or_train(world, sizes, seed)
    """
    from lrgd.config import results_dir

    models = results_dir(profile) / "models"
    if profile != "ci":
        restore_weights(path, models)
    yield
    if profile != "ci":
        commit_weights(path, models)


def write_json(path: Path, obj: object) -> Path:
    """Alias of :func:`atomic_write_json` (the name the notebooks use)."""
    return atomic_write_json(path, obj)


def save_torch(obj: object, path: Path) -> Path:
    """Alias of :func:`atomic_write_torch` with the arguments of ``torch.save``."""
    return atomic_write_torch(path, obj)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Fill a temporary folder beside ``target``; on success it replaces ``target``, on failure it is
    removed and ``target`` is untouched.

    >>> with atomic_dir(cache / "models" / "m") as tmp:  # doctest: +SKIP
    ...     model.save_pretrained(tmp)
    """
    target = Path(target)
    ensure_dir(target.parent)
    tmp = target.with_name(f".{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
    except OSError as exc:
        raise _unwritable(target.parent, exc) from exc
    try:
        yield tmp
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _open_locked(path: Path, flags: int) -> int:
    """``path`` opened with ``flags`` under an exclusive ``flock`` (released by closing the descriptor).
    If the file was replaced while this process waited for the lock (:func:`rewrite_locked`), the lock
    is on the old file: open the new one and lock again, so no line goes to a replaced file."""
    while True:
        try:
            fd = os.open(path, flags, 0o666)  # mode ∧ ¬umask, as open()
        except OSError as exc:
            raise _unwritable(path.parent, exc) from exc
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def rewrite_locked(path: Path, rewrite: Callable[[str], str]) -> Path:
    """Replace ``path`` (atomically) by ``rewrite(its text)``, read and written under the lock that
    :func:`append_line` takes, so a line appended by another process is never lost."""
    path = Path(path)
    fd = _open_locked(path, os.O_RDONLY)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        atomic_write_text(path, rewrite(text))
    finally:
        os.close(fd)
    return path


def append_line(path: Path, record: object) -> Path:
    """Append ``record`` as one complete JSON line to ``path``: a single ``write`` on a file opened for
    appending, under an exclusive ``flock`` (concurrent writers do not interleave), flushed and fsynced.

    If the file does not end with a newline (an earlier writer was killed mid-line), a newline is
    written first, so the torn fragment stays a line of its own and this record stays whole.
    NaN is refused (``ValueError``), as in :func:`atomic_write_json`.
    """
    path = Path(path)
    line = json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"
    ensure_dir(path.parent)
    _not_a_folder(path)
    fd = _open_locked(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    line = "\n" + line
        data = line.encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def read_json(path: Path) -> object:
    return json.loads(Path(path).read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- keys


def _canonical(obj: object) -> object:
    """JSON for what :func:`json.dumps` cannot encode: numpy scalars and arrays as numbers and lists,
    sets sorted, dataclasses as dicts, paths and anything else as ``str``."""
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar or array, torch tensor
        return obj.tolist()
    return str(obj)


def content_key(obj: object, n: int = 16) -> str:
    """The first ``n`` hex digits of the sha256 of ``obj`` as canonical JSON (sorted keys), so the key
    does not depend on dict order. For JSON-native values it equals the keys the library used before
    (``sha256(json.dumps(obj, sort_keys=True))``), so existing caches keep their names.

    >>> content_key({"b": 1, "a": [1, 2]}) == content_key({"a": [1, 2], "b": 1})
    True
    """
    blob = json.dumps(obj, sort_keys=True, default=_canonical).encode()
    return hashlib.sha256(blob).hexdigest()[:n]


def file_hash(path: Path, n: int | None = None, max_bytes: int | None = None) -> str:
    """sha256 of a file's bytes (the first ``max_bytes`` when given), ``n`` hex digits (all when None)."""
    h = hashlib.sha256()
    left = max_bytes
    with Path(path).open("rb") as f:
        while left is None or left > 0:
            block = f.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            h.update(block)
            left = None if left is None else left - len(block)
    return h.hexdigest()[:n]


def _source_files(module: types.ModuleType | str) -> list[tuple[str, Path]]:
    """(dotted name, file) of a module, or of every ``.py`` file of a package (sorted)."""
    mod = importlib.import_module(module) if isinstance(module, str) else module
    name = mod.__name__
    if hasattr(mod, "__path__"):  # a package: all of its source files
        out = []
        for root in mod.__path__:
            for f in sorted(Path(root).rglob("*.py")):
                rel = f.relative_to(root).with_suffix("")
                out.append((".".join([name, *rel.parts]), f))
        return out
    file = getattr(mod, "__file__", None)
    if not file or not file.endswith(".py"):
        raise ConfigError(f"code_hash: module {name!r} has no Python source file to hash")
    return [(name, Path(file))]


def code_hash(*modules: types.ModuleType | str, n: int = 16) -> str:
    """sha256 of the source text of ``modules`` (module objects or dotted names; a package counts all
    its ``.py`` files), read from disk now: editing a module changes the hash without a re-import.

    >>> code_hash("lrgd.metrics", "lrgd.rec") != code_hash("lrgd.metrics")
    True
    """
    if not modules:
        raise ConfigError("code_hash needs at least one module")
    files = sorted({item for m in modules for item in _source_files(m)})
    h = hashlib.sha256()
    for name, path in files:
        h.update(f"{name}\n".encode())
        h.update(path.read_bytes())
        h.update(b"\x00")
    return h.hexdigest()[:n]


def cache_key(config: dict, data: str | None, weights: str | None, code: str, n: int = 16) -> str:
    """One key for a cached result: the full ``config``, the data fingerprint, the model weights' hash
    and the :func:`code_hash` of the modules that computed it (None where a part does not apply)."""
    return content_key({"config": config, "data": data, "weights": weights, "code": code}, n)


def cached_json(path: Path, key_parts: dict, compute: Callable[[], object]) -> tuple[object, bool]:
    """``compute()`` stored at ``path`` under the key of ``key_parts`` (everything that determines the
    result: pass configuration, data, weights and code, e.g. the arguments of :func:`cache_key`).

    Returns (result, from_cache). A stored result is served only when its key equals this key; a file
    with another key, or one that cannot be read as a cache entry, is recomputed and replaced
    (atomically: ``{"key", "key_parts", "result"}``).
    """
    stored = read_cached(path, key_parts)
    if stored is not None:
        return stored, True
    result = compute()
    atomic_write_json(Path(path), {"key": content_key(key_parts), "key_parts": key_parts, "result": result})
    return result, False


def read_cached(path: Path, key_parts: dict) -> object | None:
    """The result :func:`cached_json` stored at ``path`` when its key is the key of ``key_parts``; None for a
    missing file, another key, or a file that cannot be read as a cache entry. Computes nothing."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        blob = read_json(path)
    except (ValueError, OSError):  # torn, corrupt or unreadable: a cache miss, not an error
        return None
    if isinstance(blob, dict) and blob.get("key") == content_key(key_parts) and "result" in blob:
        return blob["result"]
    return None


def config_key(config: dict) -> str:
    """Alias of :func:`content_key` with 16 hex digits (the name chapter 3 used)."""
    return content_key(config)

"""lrgd.results: atomic writers that respect the umask, the one content key, code hashes, the cache."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

from lrgd import results as R
from lrgd.errors import ConfigError


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ----------------------------------------------------------------------------- writers


def test_files_respect_the_umask(tmp_path, umask_027):
    # umask 027 → files 0o666 & ~0o027 = 0o640, folders 0o777 & ~0o027 = 0o750 (mkstemp alone gives 0o600)
    written = [
        R.atomic_write_json(tmp_path / "a.json", {"a": 1}),
        R.atomic_write_text(tmp_path / "b.txt", "b"),
        R.atomic_write_npy(tmp_path / "c.npy", np.zeros(2)),
        R.append_line(tmp_path / "d.jsonl", {"d": 1}),
        R.atomic_write_torch(tmp_path / "e.pt", {"e": 1}),
    ]
    assert [_mode(p) for p in written] == [0o640] * 5
    with R.atomic_dir(tmp_path / "folder") as tmp:
        R.atomic_write_text(tmp / "x", "x")
    assert _mode(tmp_path / "folder") == 0o750 and _mode(tmp_path / "folder" / "x") == 0o640
    os.umask(0o002)
    assert _mode(R.atomic_write_json(tmp_path / "f.json", {})) == 0o664


def test_failed_write_leaves_no_temp_file_and_the_old_file(tmp_path):
    path = R.atomic_write_json(tmp_path / "r.json", {"a": 1})

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write('{"a": 2, "trunc')
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError, match="mid-write"):
        R.atomic_write(path, half_then_fail)
    with pytest.raises(ValueError):
        R.atomic_write_json(path, {"a": float("nan")})  # NaN refused before anything is written
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    with pytest.raises(RuntimeError), R.atomic_dir(tmp_path / "m") as tmp:
        (tmp / "w").write_text("half")
        raise RuntimeError("conversion failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_missing_parent_is_created_and_unwritable_folder_is_one_clear_error(tmp_path):
    assert R.atomic_write_json(tmp_path / "x" / "y" / "r.json", [1]).is_file()
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    for write in (
        lambda: R.atomic_write_json(blocker / "ci" / "r.json", {}),
        lambda: R.append_line(blocker / "p.jsonl", {}),
    ):
        with pytest.raises(ConfigError, match=r"cannot write results into .*results.*writable"):
            write()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_one_clear_error(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    with pytest.raises(ConfigError, match=str(ro)):
        R.atomic_write_json(ro / "r.json", {})


def test_append_line_keeps_records_whole_after_a_torn_line(tmp_path):
    path = tmp_path / "p.jsonl"
    R.append_line(path, {"user": "a", "rank": 1})
    with path.open("a") as f:
        f.write('{"user": "b", "ra')  # a writer killed mid-line
    R.append_line(path, {"user": "c", "rank": 3})
    lines = path.read_text().split("\n")
    assert lines == ['{"user": "a", "rank": 1}', '{"user": "b", "ra', '{"user": "c", "rank": 3}', ""]
    with pytest.raises(ValueError):
        R.append_line(path, {"x": float("nan")})


def _append_many(path: str, who: int) -> None:
    for i in range(200):
        R.append_line(path, {"who": who, "i": i, "pad": "x" * 300})


def test_concurrent_appends_do_not_interleave(tmp_path):
    path = str(tmp_path / "p.jsonl")
    procs = [mp.get_context("fork").Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]  # every line parses
    assert sorted((r["who"], r["i"]) for r in rows) == [(w, i) for w in range(4) for i in range(200)]


# ----------------------------------------------------------------------------- keys


def test_content_key_is_stable_and_canonical():
    a = {"model": "m", "sizes": {"n": 3, "k": [1, 2]}, "seed": 0}
    b = {"seed": 0, "sizes": {"k": [1, 2], "n": 3}, "model": "m"}
    assert R.content_key(a) == R.content_key(b) and len(R.content_key(a)) == 16
    # the same bytes the library hashed before (sha256 of sorted-key JSON): existing caches keep their names
    legacy = hashlib.sha256(json.dumps(a, sort_keys=True).encode()).hexdigest()
    assert R.content_key(a, 12) == legacy[:12]
    assert R.content_key({"n": np.int64(3)}) == R.content_key({"n": 3})  # numpy scalars as numbers
    assert R.content_key({"s": {2, 1}}) == R.content_key({"s": [1, 2]})
    assert R.content_key(a) != R.content_key({**a, "seed": 1})


def test_cache_key_changes_with_every_part():
    base = ({"k": 2}, "data1", "weights1", "code1")
    keys = {
        R.cache_key(*base),
        R.cache_key({"k": 3}, *base[1:]),
        R.cache_key(base[0], "data2", *base[2:]),
        R.cache_key(*base[:2], "weights2", base[3]),
        R.cache_key(*base[:3], "code2"),
        R.cache_key(base[0], None, None, base[3]),
    }
    assert len(keys) == 6


def test_code_hash_follows_the_source(tmp_path, monkeypatch):
    pkg = tmp_path / "toypkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "alg.py").write_text("def f(x):\n    return x + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import toypkg.alg as alg

    before, pkg_before = R.code_hash(alg), R.code_hash("toypkg")
    assert R.code_hash("toypkg.alg") == before  # a module object or its dotted name
    (pkg / "alg.py").write_text("def f(x):\n    return x + 2\n")  # a one-character change
    assert R.code_hash(alg) != before and R.code_hash("toypkg") != pkg_before
    (pkg / "alg.py").write_text("def f(x):\n    return x + 1\n")
    assert R.code_hash(alg) == before
    (pkg / "extra.py").write_text("Y = 1\n")  # a new file in the package changes the package's hash
    assert R.code_hash("toypkg") != pkg_before and R.code_hash(alg) == before
    assert R.code_hash(alg, "toypkg") == R.code_hash("toypkg", alg)  # order-free
    with pytest.raises(ConfigError, match="no Python source"):
        R.code_hash(sys)
    sys.modules.pop("toypkg.alg", None)
    sys.modules.pop("toypkg", None)


def test_file_hash(tmp_path):
    f = tmp_path / "w.bin"
    blob = bytes(range(256)) * 10_000  # 2.56 MB: several 1 MiB blocks
    f.write_bytes(blob)
    assert R.file_hash(f) == hashlib.sha256(blob).hexdigest()
    assert R.file_hash(f, n=16, max_bytes=1 << 20) == hashlib.sha256(blob[: 1 << 20]).hexdigest()[:16]


def test_cached_json_serves_only_its_own_key(tmp_path):
    path = tmp_path / "c.json"
    calls = []

    def compute():
        calls.append(1)
        return {"value": len(calls)}

    parts = {"config": {"n": 2}, "data": "d", "weights": "w", "code": R.code_hash("lrgd.metrics")}
    assert R.cached_json(path, parts, compute) == ({"value": 1}, False)
    assert R.cached_json(path, dict(reversed(parts.items())), compute) == ({"value": 1}, True)
    assert R.cached_json(path, {**parts, "code": "other"}, compute) == ({"value": 2}, False)
    blob = json.loads(path.read_text())
    assert blob["key"] == R.content_key({**parts, "code": "other"})
    path.write_text('{"key": "')  # torn file: recomputed, not a traceback
    assert R.cached_json(path, parts, compute) == ({"value": 3}, False)
    blob = json.loads(path.read_text())
    path.write_text(json.dumps({**blob, "key": "0" * 16}))  # a stale entry with another key
    assert R.cached_json(path, parts, compute) == ({"value": 4}, False)


def test_committed_weights_restore_then_commit(tmp_path, monkeypatch):
    """At full, weights trained into an empty cache are copied to results/full/models/; a fresh cache gets
    them back before the load (so nothing retrains); a checkpoint travels until the final file replaces it;
    at ci nothing is copied either way."""
    import lrgd.config as C

    monkeypatch.setattr(C, "REPO_ROOT", tmp_path)
    cache = tmp_path / "cache" / "testbeds" / "recworld-llama-abc.pt"
    models = tmp_path / "results" / "full" / "models"
    cache.parent.mkdir(parents=True)
    with R.committed_weights(cache, "full"):
        cache.with_suffix(".partial").write_bytes(b"step 100")  # interrupted mid-training
    assert (models / "recworld-llama-abc.partial").read_bytes() == b"step 100"
    with R.committed_weights(cache, "full"):
        cache.write_bytes(b"weights")  # finished
    assert (models / cache.name).read_bytes() == b"weights"
    assert not (models / "recworld-llama-abc.partial").exists()

    cache.unlink()
    cache.with_suffix(".partial").unlink()
    seen = []
    with R.committed_weights(cache, "full"):
        seen.append(cache.read_bytes())  # restored before the load
    assert seen == [b"weights"]

    cache.unlink()
    with R.committed_weights(cache, "ci"):
        assert not cache.exists()  # ci: never restored ...
        cache.write_bytes(b"ci weights")
    assert not (tmp_path / "results" / "ci" / "models").exists()  # ... nor committed


def test_read_cached_serves_only_the_current_key(tmp_path):
    path = tmp_path / "t.json"
    assert R.read_cached(path, {"a": 1}) is None  # missing
    R.cached_json(path, {"a": 1}, lambda: {"x": 2})
    assert R.read_cached(path, {"a": 1}) == {"x": 2}
    assert R.read_cached(path, {"a": 2}) is None  # another key: never served, never computed
    path.write_text("{torn")
    assert R.read_cached(path, {"a": 1}) is None

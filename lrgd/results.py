"""Small JSON result files, written atomically (never a half-written file)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def _atomic(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_torch(obj: object, path: Path) -> Path:
    """``torch.save`` atomically (trained weights in the cache are never half-written)."""
    import torch

    return _atomic(path, lambda tmp: torch.save(obj, tmp))


def write_json(path: Path, obj: object) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and an atomic rename.

    NaN and infinities are refused (``ValueError``): they usually mean a silent failure upstream.
    """

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False, default=str, allow_nan=False)
            f.write("\n")

    return _atomic(path, write)


def read_json(path: Path) -> object:
    return json.loads(Path(path).read_text())


def config_key(config: dict) -> str:
    """A short stable hash of a JSON-serialisable configuration."""
    import hashlib

    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_json(path: Path, config: dict, compute) -> tuple[dict, bool]:
    """Return ``compute()`` stored at ``path`` for this ``config`` (recomputed when the config changes).

    Returns (result, from_cache). The file holds ``{"key", "config", "result"}`` and is written atomically.
    """
    key = config_key(config)
    path = Path(path)
    if path.is_file():
        blob = read_json(path)
        if isinstance(blob, dict) and blob.get("key") == key:
            return blob["result"], True
    result = compute()
    write_json(path, {"key": key, "config": config, "result": result})
    return result, False

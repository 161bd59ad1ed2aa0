"""Small JSON result files, written atomically (never a half-written file)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def write_json(path: Path, obj: object) -> Path:
    """Write ``obj`` as JSON to ``path`` via a temporary file and an atomic rename.

    NaN and infinities are refused (``ValueError``): they usually mean a silent failure upstream.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False, default=str, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_json(path: Path) -> object:
    return json.loads(Path(path).read_text())

"""Tag papermill's injected-parameters cell ``remove-cell`` in an executed notebook, so the book's page
shows the notebook's own ``parameters`` cell (the documented defaults) and the provenance box (the values
of this run), not papermill's duplicate.

Usage: ``python scripts/hide_injected.py _build/notebooks/X.run.ipynb`` (rewrites the file in place).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def hide(path: Path) -> int:
    """Add ``remove-cell`` to every cell tagged ``injected-parameters``; returns how many were tagged."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    n = 0
    for cell in nb.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
            n += 1
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return n


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_file():
        raise SystemExit("usage: python scripts/hide_injected.py EXECUTED.ipynb (an existing file)")
    hide(Path(sys.argv[1]))

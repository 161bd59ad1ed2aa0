"""Print the papermill ``-p name value`` pairs that a notebook declares, from the Makefile's full list.

Usage: ``python scripts/nb_params.py notebooks/01_equivalence.py -p profile ci -p dataset amazon-games``

Each notebook declares its parameters in one cell tagged ``parameters``; a parameter the notebook does
not declare is not passed (papermill would inject it anyway, as a variable the page never reads).
A notebook without exactly one such cell is an error naming the file.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

CELL = re.compile(r"^# %%(.*)$", re.M)
ASSIGN = re.compile(r"^([A-Za-z_]\w*)\s*=", re.M)


def declared(path: Path) -> list[str]:
    """Names assigned in the notebook's ``parameters`` cell (a jupytext percent file)."""
    text = path.read_text(encoding="utf-8")
    heads = list(CELL.finditer(text))
    cells = [
        text[h.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        for i, h in enumerate(heads)
        if "parameters" in h.group(1)
    ]
    if len(cells) != 1:
        raise SystemExit(f"error: {path} has {len(cells)} cells tagged 'parameters'; it needs exactly one")
    return ASSIGN.findall(cells[0])


def main(argv: list[str]) -> int:
    path, rest = Path(argv[0]), argv[1:]
    names = set(declared(path))
    pairs = [(rest[i + 1], rest[i + 2]) for i in range(0, len(rest) - 2, 3) if rest[i] == "-p"]
    print(" ".join(f"-p {n} {v}" for n, v in pairs if n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

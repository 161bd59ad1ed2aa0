"""The notebooks' parameters: one ``parameters`` cell each, every declared parameter used, and every
parameter the README documents reaches every notebook that declares it (through the Makefile)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.py"))
sys.path.insert(0, str(ROOT / "scripts"))
from nb_params import declared  # noqa: E402

NO_SEED = {"05_benchmarks.py"}  # renders recorded times and measurements; draws nothing at random


def readme_parameters() -> list[str]:
    """Names in the README's parameter table (rows like ``| `profile` | ... |``)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text.split("| parameter | values |", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^\| `(\w+)` \|", table, re.M)


def test_readme_documents_the_shared_parameters():
    assert readme_parameters() == ["profile", "device", "dtype", "model", "dataset", "seed"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_declared_parameters_are_used(nb: Path):
    """A notebook that declares a parameter reads it after the parameters cell (else it should not
    declare it)."""
    names = declared(nb)
    assert "profile" in names and ("seed" in names or nb.name in NO_SEED)
    body = nb.read_text(encoding="utf-8").split('tags=["parameters"]', 1)[1].split("\n# %%", 1)[1]
    unused = [n for n in names if not re.search(rf"\b{n}\b", body)]
    assert not unused, f"{nb.name} declares {unused} but never reads them"
    # ``n_users = n_users or profile.eval.n_users`` resolves a default; ``model = "x"`` overwrites
    overwritten = [n for n in names if re.search(rf"^{n}\s*=(?!.*\b{n}\b)", body, re.M)]
    assert not overwritten, f"{nb.name} overwrites its parameter(s) {overwritten}"


def test_make_passes_every_documented_parameter_to_each_declaring_notebook():
    """``make -n`` with non-default values: each notebook gets exactly the documented parameters it
    declares, with the values given on the command line."""
    values = {
        "PROFILE": "full",
        "DEVICE": "cpu",
        "DTYPE": "bfloat16",
        "MODEL": "gemma3-270m",
        "DATASET": "amazon-beauty",
        "SEED": "7",
    }
    out = subprocess.run(
        ["make", "-n", "-B", "notebooks", *(f"{k}={v}" for k, v in values.items()), "BIN=.venv/bin"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    line = re.search(r"nb_params\.py \S+ (.*)\)\"", out).group(1)
    passed = dict(re.findall(r"-p (\w+) (\S+)", line))
    assert passed == {k.lower(): v for k, v in values.items()}
    documented = set(readme_parameters())
    for nb in NOTEBOOKS:
        got = subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "nb_params.py"), str(nb), *line.split()],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        got_names = set(got[1::3])
        assert got_names == documented & set(declared(nb)), nb.name
        for name, value in zip(got[1::3], got[2::3]):
            assert value == passed[name]


def test_hide_injected_tags_only_papermills_cell(tmp_path) -> None:
    """The executed notebook's injected-parameters cell gets ``remove-cell`` (once); the notebook's own
    parameters cell and the others keep their tags."""
    import json

    from hide_injected import hide

    cells = [
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "source": "seed = 0"},
        {"cell_type": "code", "metadata": {"tags": ["injected-parameters"]}, "source": "seed = 1"},
        {"cell_type": "code", "metadata": {}, "source": "print(seed)"},
    ]
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps({"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert hide(path) == 1 and hide(path) == 0
    tags = [c["metadata"].get("tags", []) for c in json.loads(path.read_text())["cells"]]
    assert tags == [["parameters"], ["injected-parameters", "remove-cell"], []]

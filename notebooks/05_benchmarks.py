# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 5. What it costs: build times and benchmarks
#
# Two kinds of cost a reader may want before re-running anything. **The build**: how long each chapter
# of this book took to execute, read from the executed notebooks themselves (papermill records when each
# cell started and ended), for the profile this book was built with. **The benchmarks**: the speed-ups
# the library's design promises — KV-cached candidate scoring, Effect_D's O(M + N) passes, rebuilding
# the dual from one forward pass, the two-stage optimiser against brute force, training throughput —
# each measured as a ratio in one run by `make bench` (`benchmarks/run_all.py`), which records what
# every script printed in `benchmarks/results.json`. Wall times depend on the machine and on what else
# runs on it (2–5× on two shared cores), so every row says where and when it was measured.

# %% tags=["parameters"]
profile = "ci"  # ci | full | gpu — which profile's executed notebooks the build table reads

# %% tags=["hide-input"]
import ast
import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Markdown, display

from lrgd.config import REPO_ROOT, get_profile
from lrgd.rec import report

prof = get_profile(profile)
built = REPO_ROOT / "_build" / "notebooks"
bench_file = REPO_ROOT / "benchmarks" / "results.json"


def show(df: pd.DataFrame, uuid: str, caption: str, precision: int = 1) -> None:
    """Render ``df`` as an HTML table (fixed id: re-executions render identically)."""
    display(report.styled(df, f"ch5-{uuid}", caption, precision))


# %% [markdown]
# ## 5.1 The build
#
# Seconds spent executing each chapter (the sum of its cells' durations as papermill recorded them) and
# the slowest cell, for every chapter executed before this page. A chapter whose runs were already
# cached (an earlier build, or `make test`'s second pass) executes in a fraction of its first time: the
# table describes the build that produced these pages.


# %% tags=["hide-input"]
def chapter_times(path: Path) -> dict:
    """Execution seconds of one executed notebook (sum over cells) and its slowest cell."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    pm = nb.get("metadata", {}).get("papermill", {})
    cells = [
        (c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0, "".join(c.get("source", ""))[:60])
        for c in nb["cells"]
        if c["cell_type"] == "code"
    ]
    slow = max(cells, default=(0.0, ""))
    return {
        "chapter": path.stem,
        "profile": pm.get("parameters", {}).get("profile", "—"),
        "seconds": sum(d for d, _ in cells),
        "slowest cell (s)": slow[0],
        "slowest cell starts with": slow[1].splitlines()[0] if slow[1] else "",
    }


runs = [chapter_times(p) for p in sorted(built.glob("*.ipynb")) if not p.stem.startswith("05_")]
if runs:
    bt = pd.DataFrame(runs).set_index("chapter")
    show(bt, "build", f"execution time of each chapter in this build ({len(bt)} chapters, "
         f"{bt['seconds'].sum() / 60:.1f} min in total)")  # fmt: skip
else:
    bt = pd.DataFrame()
    display(Markdown("No executed chapter was found in `_build/notebooks/`: run `make notebooks` first."))

# %% tags=["hide-input"]
if len(bt):
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(bt) + 1))
    ax.barh(bt.index[::-1], bt["seconds"][::-1] / 60, color="C0")
    ax.set(xlabel="minutes", title=f"time to execute each chapter (profile {prof.name})")
    fig.tight_layout()
    plt.show()

# %% [markdown]
# ## 5.2 The benchmarks
#
# One row per benchmark script: what it compares (its docstring's first line), its headline (the ratio it
# prints last), the wall time and peak resident memory of its process, and where and when it ran.
# `benchmarks/README.md` keeps the targets and the notes on each measurement.


# %% tags=["hide-input"]
def purpose(script: str) -> str:
    """The first line of a benchmark script's docstring."""
    doc = ast.get_docstring(ast.parse((REPO_ROOT / "benchmarks" / script).read_text(encoding="utf-8")))
    return (doc or "").splitlines()[0] if doc else ""


if bench_file.exists():
    recs = json.loads(bench_file.read_text(encoding="utf-8"))["scripts"]
    recs = {n: r for n, r in sorted(recs.items()) if (REPO_ROOT / "benchmarks" / n).exists()}
    what = pd.DataFrame(
        {
            n: {"compares": purpose(n), "headline (the last line it printed)": r["headline"]}
            for n, r in recs.items()
        }
    ).T.rename_axis("script")
    show(what, "bench", f"the last `make bench` run of each benchmark ({len(what)} scripts)")
    where = pd.DataFrame(
        {
            n: {
                "status": r["status"],
                "wall s": r["seconds"],
                "peak RSS (MiB)": r["peak_rss_mib"],
                "arguments": " ".join(r["args"]) or "—",
                "commit": r["commit"],
                "when": r["when"],
            }
            for n, r in recs.items()
        }
    ).T.rename_axis("script")
    machines = sorted({r["machine"].split(", load")[0] for r in recs.values()})
    show(
        where,
        "bench-where",
        f"where and how long each ran ({'; '.join(machines)}; load average in results.json)",
    )
else:
    display(Markdown("No benchmark has been recorded yet: `make bench` writes `benchmarks/results.json`."))

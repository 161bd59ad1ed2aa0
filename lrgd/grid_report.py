"""Chapter 6's tables: the published summaries of one profile's grid (:mod:`lrgd.grid`) → one table per
dataset, methods as rows and HR@1/5/10, NDCG@5/10, MRR with 95% CIs as columns.

**Rows** come from the grid's *test* tasks, so every row is on the same first ``n_users`` test users and
the same saved candidates: per LLM (grouped by model) its zero-shot and demonstration selectors, the
non-LLM references, and the trained reader of chapter 2b at k = 0 and at its best (selector, k). A task
whose summary is not published under its current key is a row of "—", never dropped.

**Choices, all on validation users** (the grid's *valid* tasks), never on the test users of the table:

* the score variant of each LLM: :func:`lrgd.rec.runner.choose_variant` pooled over that model's
  published zero-shot validation runs (no validation run published: its rows are "—");
* the reader's best (selector, k): the highest mean NDCG@10 on the dataset's validation users;
* the **baseline** of each group of rows: the best *non-demonstration* row — the group's own zero-shot
  (k = 0) row or a non-LLM reference; for the references' own rows, the best reference — by mean NDCG@10
  on validation users when every candidate has a published validation run, else on the test users, and
  then marked :data:`ON_TEST`.

**Test.** Every other row is compared with its group's baseline on the same users: the paired bootstrap
CI of the per-user NDCG@10 difference and a sign-flip permutation p (:func:`lrgd.rec.report.paired`),
Holm-adjusted over all comparisons of one table; :data:`BETTER` / :data:`WORSE` mark adjusted p < 0.05.

>>> tasks = grid_tasks("full")  # doctest: +SKIP
>>> tables = build_tables(published(Runner("full", "cpu"), tasks), n_boot=2000)  # doctest: +SKIP
>>> display(style_table(tables[0], "ch6-beauty", "full"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from lrgd.grid import GridTask, load
from lrgd.metrics import METRICS, format_p, holm, per_user_metrics, summarize
from lrgd.rec import report
from lrgd.rec.runner import choose_variant

__all__ = [
    "Row",
    "Table",
    "build_table",
    "build_tables",
    "choose_reader",
    "choose_variants",
    "compute_seconds",
    "forest",
    "published",
    "style_table",
    "table_frames",
    "tally",
]

#: the metric every choice and every paired test uses
METRIC = "NDCG@10"
#: Holm-adjusted p below this is marked
ALPHA = 0.05
BETTER, WORSE = "▲", "▼"
#: marks a baseline chosen on test users (some candidate has no published validation run)
ON_TEST = "†"
REFERENCES = "references"
#: reader selectors shown as rows of their own (besides k = 0 and the best (selector, k))
SHOWN_READER_METHODS = ("reader-effect", "reader-robust-effect", "two-stage")
#: the last column: the paired difference from the group's baseline
COMPARE = f"Δ{METRIC} vs baseline [95% CI], Holm p"
#: the dtype of each profile's published LLM results (part of their keys): CPU runs use float32, the
#: ``gpu`` profile runs in bfloat16 on cuda (:func:`lrgd.config.resolve_dtype`)
PUBLISHED_DTYPE = {"ci": "float32", "full": "float32", "gpu": "bfloat16"}
DATASET_TITLES = {
    "amazon-beauty": "Amazon Beauty",
    "amazon-toys": "Amazon Toys and Games",
    "amazon-games": "Amazon Video Games",
    "amazon-scientific": "Amazon Industrial and Scientific",
    "ml-100k": "MovieLens-100k",
}
METHOD_LABELS = {
    "zero-shot": "zero-shot",
    "random": "random",
    "recent": "recent",
    "similarity": "similarity",
    "popular": "popular",
    "effect": "Effect_D per user",
    "effect-global": "Effect_D global",
    "reader-effect": "Effect_D per user",
    "reader-robust-effect": "robust Effect_D per user",
    "two-stage": "two-stage optimiser (one global set)",
    "ref-popularity": "popularity",
    "ref-bm25": "BM25",
    "ref-markov": "Markov",
}


# ----------------------------------------------------------------------------- reading


def published(runner, tasks: Sequence[GridTask]) -> dict[GridTask, dict | None]:
    """Each task → its published summary under its current key (:func:`lrgd.grid.load`), or None."""
    return {t: load(runner, t.cfg) for t in tasks}


def compute_seconds(results: Mapping[GridTask, dict | None]) -> float:
    """The compute time the published summaries of ``results`` recorded: per run, its users × (seconds
    per user + the null pass's), as measured by its per-user records on the machine and load they ran
    under (a run's users served from an earlier run's records count with their recorded times)."""
    total = 0.0
    for r in results.values():
        if r is not None:
            prov = r.get("provenance", {})
            per_user = float(prov.get("seconds_per_user") or 0.0) + float(
                prov.get("null_seconds_per_user") or 0.0
            )
            total += per_user * len(r["users"])
    return total


def _mean(result: dict, variant: str, metric: str = METRIC) -> float:
    return float(per_user_metrics(result["ranks"][variant], (metric,))[metric].mean())


def choose_variants(results: Mapping[GridTask, dict | None]) -> dict[str, tuple[str | None, int]]:
    """LLM → (score variant, number of validation runs pooled), from its published zero-shot validation
    runs (:func:`lrgd.rec.runner.choose_variant`); ``(None, 0)`` when none is published."""
    by_model: dict[str, list[dict]] = {}
    for t, r in results.items():
        if t.kind == "llm":
            runs = by_model.setdefault(t.cfg.model, [])
            if t.role == "valid" and t.cfg.method == "zero-shot" and r is not None:
                runs.append(r)
    return {m: (choose_variant(rs, METRIC)[0], len(rs)) if rs else (None, 0) for m, rs in by_model.items()}


def choose_reader(results: Mapping[GridTask, dict | None], dataset: str) -> tuple[str, int] | None:
    """The reader's (selector, k > 0) with the highest mean NDCG@10 on ``dataset``'s *validation* users
    (ties: the earlier task of the grid); None when no such validation run is published."""
    best, best_value = None, -np.inf
    for t, r in results.items():
        c = t.cfg
        if t.kind == "reader" and t.role == "valid" and c.dataset == dataset and c.k > 0 and r is not None:
            value = _mean(r, "score")
            if value > best_value:
                best, best_value = (c.method, c.k), value
    return best


# ----------------------------------------------------------------------------- one table


@dataclass
class Row:
    """One row of a table: its ``group`` (an LLM, the references or the reader), ``label``, the test
    summary (None: missing), the score ``variant`` read (None: not chosen), whether it is a
    non-demonstration row (a baseline candidate), its validation counterpart's summary (None: none
    published) and its ``model``."""

    group: str
    label: str
    result: dict | None
    variant: str | None
    plain: bool
    valid: dict | None = None
    model: str = ""  # the LLM or trained model ("" for a reference)

    @property
    def ready(self) -> bool:
        return self.result is not None and self.variant is not None


@dataclass
class Table:
    """One dataset's rows, each group's baseline (row index, chosen on ``"validation"`` or ``"test"``),
    the paired comparisons (row index → ``{diff, lo, hi, p, p_holm}``) and the notes under the table."""

    dataset: str
    rows: list[Row]
    baselines: dict[str, tuple[int, str]] = field(default_factory=dict)
    tests: dict[int, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def users(self) -> list[int]:
        """The distinct numbers of users of the published rows."""
        return sorted({r.result["n_users"] for r in self.rows if r.result is not None})

    @property
    def models(self) -> list[str]:
        """The models of the table's rows (LLMs and the reader), in row order."""
        return list(dict.fromkeys(r.model for r in self.rows if r.model))

    @property
    def commits(self) -> list[str]:
        """The commits recorded in the provenance of the published rows."""
        return sorted({r.result["provenance"].get("commit", "?") for r in self.rows if r.result is not None})


def _valid_twin(task: GridTask, results: Mapping[GridTask, dict | None]) -> dict | None:
    """The published validation run of the same dataset, model, method and k as test ``task``."""

    def what(t: GridTask) -> tuple:
        return t.kind, t.cfg.dataset, t.cfg.model, t.cfg.method, t.cfg.k

    return next((r for t, r in results.items() if t.role == "valid" and what(t) == what(task)), None)


def _llm_label(task: GridTask) -> str:
    label = METHOD_LABELS.get(task.cfg.method, task.cfg.method)
    return label if task.cfg.k == 0 else f"{label}, k = {task.cfg.k}"


def _rows(dataset: str, results: Mapping[GridTask, dict | None], variants) -> tuple[list[Row], list[str]]:
    """The rows of ``dataset``'s table in the grid's order (LLMs by model, references, the reader)."""
    tests = [t for t in results if t.role == "test" and t.cfg.dataset == dataset]
    rows: list[Row] = []
    notes: list[str] = []
    for model in dict.fromkeys(t.cfg.model for t in tests if t.kind == "llm"):
        variant, n_valid = variants.get(model, (None, 0))
        if variant is None:
            notes.append(f"{model}: no validation run is published, so its score variant is not chosen "
                         "and its rows are empty.")  # fmt: skip
        else:
            notes.append(f"{model}: score variant '{variant}', chosen on {n_valid} validation run(s).")
        for t in (t for t in tests if t.kind == "llm" and t.cfg.model == model):
            plain = t.cfg.k == 0
            twin = _valid_twin(t, results) if plain else None
            rows.append(Row(model, _llm_label(t), results[t], variant, plain, twin, model))
    for t in (t for t in tests if t.kind == "reference"):
        rows.append(Row(REFERENCES, METHOD_LABELS.get(t.cfg.method, t.cfg.method), results[t], "score",
                        True, _valid_twin(t, results)))  # fmt: skip
    readers = [t for t in tests if t.kind == "reader"]
    if readers:
        group = "reader"  # chapter 2b's trained reader (its model name is in the caption)
        zero = next(t for t in readers if t.cfg.k == 0)
        reader = zero.cfg.model
        rows.append(Row(group, "k = 0", results[zero], "score", True, _valid_twin(zero, results), reader))
        pick = choose_reader(results, dataset)
        if pick is None:
            rows.append(Row(group, "best (selector, k)", None, None, False, model=reader))
            notes.append(f"{group}: no validation run is published, so its best (selector, k) is not chosen.")
        else:
            best = next(t for t in readers if (t.cfg.method, t.cfg.k) == pick)
            label = f"best: {pick[0]}, k = {pick[1]}"
            rows.append(Row(group, label, results[best], "score", False, model=reader))
            notes.append(f"{group} ({reader}): the best (selector, k) by mean {METRIC} on validation users.")
        for t in (t for t in readers if t.cfg.method in SHOWN_READER_METHODS):
            label = f"{METHOD_LABELS[t.cfg.method]}, k = {t.cfg.k}"
            rows.append(Row(group, label, results[t], "score", False, model=reader))
    return rows, notes


def _baseline(rows: list[Row], candidates: list[int]) -> tuple[int, str] | None:
    """The candidate row with the best mean NDCG@10: on validation users when every candidate has a
    published validation run, else on test users. Ties go to the earlier row."""
    ready = [i for i in candidates if rows[i].ready]
    if not ready:
        return None
    on_valid = all(rows[i].valid is not None for i in candidates)
    runs = {i: (rows[i].valid if on_valid else rows[i].result) for i in ready}
    best = max(ready, key=lambda i: (_mean(runs[i], rows[i].variant), -i))
    return best, "validation" if on_valid else "test"


def build_table(dataset: str, results: Mapping[GridTask, dict | None], n_boot: int, seed: int = 0) -> Table:
    """``dataset``'s table from the published summaries ``results`` (test and valid tasks of the grid):
    rows, each group's baseline, and the paired tests against it (Holm-adjusted over the table)."""
    rows, notes = _rows(dataset, results, choose_variants(results))
    table = Table(dataset, rows, notes=notes)
    refs = [i for i, r in enumerate(rows) if r.group == REFERENCES]
    for group in dict.fromkeys(r.group for r in rows):
        own = [i for i, r in enumerate(rows) if r.group == group and r.plain]
        base = _baseline(rows, own if group == REFERENCES else own + refs)
        if base is not None:
            table.baselines[group] = base
    for i, r in enumerate(rows):
        base = table.baselines.get(r.group)
        if base is None or base[0] == i or not r.ready:
            continue
        b = rows[base[0]]
        if r.result["users"] != b.result["users"]:
            table.notes.append(f"{r.group} {r.label}: other users than its baseline; not compared.")
            continue
        table.tests[i] = report.paired(r.result, b.result, r.variant, b.variant, n_boot, seed, METRIC)
    idx = list(table.tests)
    for i, p in zip(idx, holm([table.tests[i]["p"] for i in idx])):
        table.tests[i]["p_holm"] = float(p)
    return table


def build_tables(results: Mapping[GridTask, dict | None], n_boot: int, seed: int = 0) -> list[Table]:
    """One :class:`Table` per dataset of the grid's test tasks (in their order), from ``results``
    (:func:`published`: every task of the grid → its published summary or None)."""
    datasets = dict.fromkeys(t.cfg.dataset for t in results if t.role == "test")
    return [build_table(d, results, n_boot, seed) for d in datasets]


# ----------------------------------------------------------------------------- rendering


def _mark(test: dict) -> str:
    if test["p_holm"] < ALPHA:
        return BETTER if test["diff"] > 0 else WORSE
    return ""


def table_frames(table: Table, n_boot: int = 2000, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(cells, means): the HTML cell text [rows, columns] and the numeric means [rows, metrics] (NaN for
    a missing row), indexed by (group, method). CIs are recomputed from the per-user ranks."""
    index = pd.MultiIndex.from_tuples([(r.group, r.label) for r in table.rows], names=["model", "method"])
    cells, means = [], []
    for i, r in enumerate(table.rows):
        stats = summarize(r.result["ranks"][r.variant], n_boot, seed) if r.ready else {}
        means.append({m: stats[m]["mean"] if stats else np.nan for m in METRICS})
        row = {m: _ci_cell(stats[m]) if stats else "—" for m in METRICS}
        row[COMPARE] = _test_cell(table, i)
        cells.append(row)
    return pd.DataFrame(cells, index=index), pd.DataFrame(means, index=index)


def _ci_cell(x: dict) -> str:
    return f"{x['mean']:.3f}<br><span class='ci'>[{x['lo']:.2f}, {x['hi']:.2f}]</span>"


def _test_cell(table: Table, i: int) -> str:
    r = table.rows[i]
    base = table.baselines.get(r.group)
    if base is not None and base[0] == i:
        return "baseline" + (ON_TEST if base[1] == "test" else "")
    if i not in table.tests:
        return "—"
    t = table.tests[i]
    head = f"{t['diff']:+.3f} {_mark(t)}".rstrip()
    return f"{head}<br><span class='ci'>[{t['lo']:+.2f}, {t['hi']:+.2f}]<br>p {format_p(t['p_holm'])}</span>"


def caption(table: Table, profile: str, number: str = "") -> str:
    """Dataset, profile, models, users and the commit(s) recorded in the rows' provenance."""
    models = ", ".join(table.models)
    users = " / ".join(str(n) for n in table.users) or "no published run"
    commits = ", ".join(table.commits) or "none"
    title = DATASET_TITLES.get(table.dataset, table.dataset)
    return (f"{number}{title} · profile {profile} · models {models} · {users} test users, the same in "
            f"every row · mean [95% CI] · commit {commits}")  # fmt: skip


#: a compact table, so that six metrics with their intervals fit the page's width; the interval under a
#: mean is smaller and never bold or underlined (an inline-block stops the underline from propagating)
COMPACT = [
    {"selector": "td, th", "props": "font-size: 0.8em; padding: 2px 3px; vertical-align: middle"},
    {
        "selector": ".ci",
        "props": "display: inline-block; font-size: 0.8em; font-weight: normal; white-space: nowrap",
    },
    {"selector": "caption", "props": "text-align: left"},
    # a model's label (spanning its rows) at the top of its group, with a rule above: centred, a label read as
    # belonging to the neighbouring group's rows
    {"selector": "th.row_heading.level0", "props": "vertical-align: top; border-top: 1px solid #bbb"},
]


def style_table(table: Table, uuid: str, profile: str, number: str = "", n_boot: int = 2000, seed: int = 0):
    """The table as a pandas Styler: best mean per metric bold, second underlined
    (:func:`lrgd.rec.report.styled_best`), compact."""
    cells, means = table_frames(table, n_boot, seed)
    sty = report.styled_best(cells, means, uuid, caption(table, profile, number))
    return sty.set_table_styles(COMPACT, overwrite=False)


def notes_text(table: Table) -> str:
    """The sentences under a table: the choices made, and each group's baseline and where it was chosen."""
    lines = list(table.notes)
    picks = [f"{group} → {table.rows[i].label}{ON_TEST if on == 'test' else ''}"
             for group, (i, on) in table.baselines.items()]  # fmt: skip
    if picks:
        on_test = any(on == "test" for _, on in table.baselines.values())
        why = (f" ({ON_TEST}: chosen on the test users, because a candidate has no validation run)"
               if on_test else "")  # fmt: skip
        head = f"Baselines, the best row without demonstrations by mean {METRIC}"
        lines.append(f"{head}: {'; '.join(picks)}{why}.")
    return "\n".join(f"- {x}" for x in lines)


# ----------------------------------------------------------------------------- words and JSON


def _who(row: Row) -> str:
    return row.label if row.group == REFERENCES else f"{row.group} ({row.label})"


def reading(table: Table) -> str:
    """One generated sentence per table: the highest mean NDCG@10 and the rows that differ from their
    baseline after Holm (true at any profile: every number comes from ``table``)."""
    title = DATASET_TITLES.get(table.dataset, table.dataset)
    ready = [r for r in table.rows if r.ready]
    empty = len(table.rows) - len(ready)
    gap = f" {empty} of its {len(table.rows)} rows are not published yet." if empty else ""
    if not ready:
        return f"{title}: no row is published yet.{gap}"
    best = max(ready, key=lambda r: _mean(r.result, r.variant))
    value = _mean(best.result, best.variant)
    words = [f"{title}: the highest mean {METRIC}, {value:.3f}, is {_who(best)}'s."]
    for mark, what in ((BETTER, "better"), (WORSE, "worse")):
        names = [_who(table.rows[i]) for i, t in table.tests.items() if _mark(t) == mark]
        if names:
            words.append(f"{what.capitalize()} than their baseline after Holm: {'; '.join(names)}.")
    if not any(_mark(t) for t in table.tests.values()):
        words.append("No row differs from its baseline after Holm.")
    return " ".join(words) + gap


def mismatched_users(table: Table) -> int:
    """Published rows whose users (in order) differ from the table's first published row; a table is
    built on the same users in every row, so this is 0 (a check of the grid, not of a claim)."""
    users = [r.result["users"] for r in table.rows if r.result is not None]
    return sum(u != users[0] for u in users)


def stored_mean_gap(table: Table) -> float:
    """Largest |mean recomputed from the per-user ranks − the mean stored in the summary| over the
    published rows and metrics (0 when the summaries are consistent; NaN-free)."""
    gaps = [0.0]
    for r in (r for r in table.rows if r.ready and "metrics" in r.result):
        per = per_user_metrics(r.result["ranks"][r.variant])
        gaps += [abs(per[m].mean() - r.result["metrics"][r.variant][m]["mean"]) for m in METRICS]
    return float(max(gaps))


def rows_json(table: Table) -> list[dict]:
    """The table's rows as JSON-ready dicts: group, label, variant, NDCG@10 mean [CI] and the test."""
    out = []
    for i, r in enumerate(table.rows):
        row = {"group": r.group, "label": r.label, "variant": r.variant, "published": r.ready}
        if r.ready:
            row["NDCG@10"] = round(_mean(r.result, r.variant), 5)
        if i in table.tests:
            row.update({k: round(float(v), 5) for k, v in table.tests[i].items()})
        out.append(row)
    return out


def _figure_label(r: Row) -> str:
    """A row's label across datasets (the reader's chosen (selector, k) differs between them)."""
    return f"{r.group} · " + ("best (selector, k)" if r.label.startswith("best") else r.label)


def forest(tables: Sequence[Table], n_boot: int = 2000, seed: int = 0, n_candidates: int = 20):
    """A figure of every published row's mean NDCG@10 with its 95% bootstrap CI, one marker per dataset,
    rows in the tables' order; the dotted line is a uniformly random ranking of ``n_candidates``.
    Rows with no published dataset are left out. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    from lrgd.metrics import expected_random_metrics

    labels: list[str] = []
    points: dict[str, list[tuple[str, dict]]] = {}
    for table in tables:
        for r in table.rows:
            key = _figure_label(r)
            labels.append(key)
            if r.ready:
                stats = summarize(r.result["ranks"][r.variant], n_boot, seed)[METRIC]
                points.setdefault(key, []).append((table.dataset, stats))
    rows = [k for k in dict.fromkeys(labels) if k in points]
    datasets = list(dict.fromkeys(t.dataset for t in tables))
    fig, ax = plt.subplots(figsize=(10, 0.42 * len(rows) + 1.4))
    step = 0.7 / max(len(datasets), 1)
    for j, name in enumerate(datasets):
        ys, xs, err = [], [], [[], []]
        for y, key in enumerate(rows):
            for d, x in points[key]:
                if d == name:
                    ys.append(y + (j - (len(datasets) - 1) / 2) * step)
                    xs.append(x["mean"])
                    err[0].append(x["mean"] - x["lo"])
                    err[1].append(x["hi"] - x["mean"])
        title = DATASET_TITLES.get(name, name)
        ax.errorbar(xs, ys, xerr=err, fmt="o", ms=4, lw=1, color=f"C{j}", label=title)
    rnd = expected_random_metrics(n_candidates)[METRIC]
    ax.axvline(rnd, color="k", lw=0.7, ls=":", label="random ranking")
    ax.set_yticks(range(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlabel(f"{METRIC} (mean and 95% bootstrap CI over test users)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


#: the columns of :func:`tally`
TALLY = ("rows", "published", f"better {BETTER}", f"worse {WORSE}", "no detectable difference")


def tally(tables: Sequence[Table]) -> pd.DataFrame:
    """Across ``tables``: per group (each LLM, the references, the reader), how many rows there are,
    how many are published, and how many of the compared ones are better / worse than their baseline
    after Holm or not distinguishable from it."""
    counts: dict[str, dict[str, int]] = {}
    for table in tables:
        for i, r in enumerate(table.rows):
            c = counts.setdefault(r.group, dict.fromkeys(TALLY, 0))
            c["rows"] += 1
            c["published"] += r.ready
            if i in table.tests:
                c[TALLY[{BETTER: 2, WORSE: 3, "": 4}[_mark(table.tests[i])]]] += 1
    return pd.DataFrame.from_dict(counts, orient="index", columns=list(TALLY)).rename_axis("group")

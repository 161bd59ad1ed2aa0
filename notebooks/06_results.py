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
# # 6. The main results: every method on the same users
#
# The paper reports its methods in one table per dataset: methods as rows, HR@K, NDCG@K and MRR as
# columns, the best value in bold and the second underlined. This chapter builds those tables from the
# **results grid** (`lrgd.grid`): every (dataset, model, method) condition of a profile, each one run
# of chapter 2's resumable runner, published under `results/<profile>/grid/` with a key of its full
# configuration, the data, the model weights and the code. A condition whose inputs changed has a new
# key and shows as missing (a row of "—") instead of an old number.
#
# The protocol is chapter 2's: leave-one-out splits, 20 candidates per user (the target and 19 items
# the user never touched, saved once, so every row ranks identical lists), and in each table every row
# on the same first test users of the seeded order. Every choice is made on **validation** users: the
# LLMs' score variant (chapter 2, §2.3), the reader's selector and $k$, and each group's baseline
# where validation runs exist. Chapters 2–4 discuss each method; this chapter only puts them side by
# side.
#
# By default the pages show the committed `full` results without computing anything (the `ci` build
# reads them); `tables_profile` names another profile's grid, and when it is the profile being built
# the chapter first computes what is missing (`python -m lrgd grid --profile full` does the same, in
# parallel).

# %% tags=["parameters"]
profile = "ci"  # ci | full | gpu — the profile of this build
device = "auto"  # auto | cpu | cuda — used only when this chapter computes (tables_profile == profile)
dtype = "auto"  # the LLMs' dtype when computing (auto: bfloat16 on cuda, float32 elsewhere)
seed = 0
tables_profile = ""  # whose grid the tables show: "" → full when profile is ci, else the profile itself

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
from IPython.display import Markdown, display

from lrgd import grid_report as gr
from lrgd.checks import Checks
from lrgd.config import get_profile, resolve_device, results_dir
from lrgd.grid import estimate_seconds, grid_tasks, run_task
from lrgd.progress import progress
from lrgd.provenance import Provenance
from lrgd.rec import report
from lrgd.rec.runner import Runner
from lrgd.results import write_json

shown = tables_profile or ("full" if profile == "ci" else profile)
compute = shown == profile
G = get_profile(shown).grid
dev = resolve_device(device) if compute else "cpu"  # reading needs no model: keys only
llm_dtype = dtype if compute else gr.PUBLISHED_DTYPE[shown]  # the dtype enters every LLM result's key
runner = Runner(shown, dev, quiet=True, dtype=llm_dtype)
tasks = grid_tasks(shown, seed)
prov = Provenance(profile=profile, device=dev, seed=seed, dataset=", ".join(G.datasets))
checks = Checks()
print(f"build profile={profile}; tables from profile={shown} ({'computed here' if compute else 'read only'})")

# %% [markdown]
# ## 6.1 What is published
#
# The grid of the shown profile: how many of its runs are published under their current keys, the
# compute their records measured (on the machine and under the load they ran with), how long the
# missing ones would take (the median seconds per user measured by earlier runs of the same
# model, method and $k$; an upper bound, since cached users are not subtracted), and the command that
# computes them.

# %%
results = gr.published(runner, tasks)  # task → its summary under its current key, or None
missing = [t for t, r in results.items() if r is None]
eta = estimate_seconds(missing, runner.root.parent)
print(f"profile {shown}: {len(tasks)} runs in the grid, {len(tasks) - len(missing)} published, "
      f"{len(missing)} missing")  # fmt: skip
spent = gr.compute_seconds(results)
print(
    f"compute recorded by the published runs: {spent / 3600:.1f} CPU-hours (users × their measured seconds)"
)
if missing:
    when = f"{eta / 60:.0f} min" if eta >= 60 else f"{eta:.0f} s"
    print(f"estimated time of the missing runs: about {when} (at the speeds earlier runs measured)")
    print(f"compute them with: python -m lrgd grid --profile {shown}")
if compute and missing:
    for task in progress(missing, f"grid {shown}", total=len(missing)):
        run_task(runner, task)
    results = gr.published(runner, tasks)
    missing = [t for t, r in results.items() if r is None]
    print(f"after computing: {len(tasks) - len(missing)} published, {len(missing)} missing")

# %% [markdown]
# ## 6.2 The tables
#
# One table per dataset. **Rows**, grouped by model: each LLM at $k = 0$ (zero-shot) and with $k$
# demonstrations chosen by each selector the profile runs (random, most recent, most similar history,
# most popular items, Effect_D per user and global, chapter 3); the non-LLM references (popularity,
# BM25 over titles, a first-order Markov chain); chapter 2b's reader, trained to read demonstrations
# of anonymised items, at $k = 0$, at the (selector, $k$) with the best NDCG@10 on validation users,
# and, where the profile runs them, with demonstrations ranked by its own Effect_D (chapter 2b, §2b.5)
# and by chapter 4's robust score of it (the mean minus λ times the spread of Effect_D over perturbed
# copies of each candidate, §4.5; our reconstruction), and with the two-stage optimiser's one global set
# of demonstrations, chosen on validation users kept apart from these test users (§4.8; our
# reconstruction).
# **Columns**: the mean over test users with its 95% bootstrap interval; bold marks the best mean of a
# column, underline the second. The last column compares each row with its group's **baseline** — the
# best row without demonstrations (the group's own $k = 0$ row or a reference) — on the same users:
# the mean NDCG@10 difference with its 95% interval and the permutation p-value, Holm-adjusted over the
# table; ▲ / ▼ mark an adjusted p below the level α printed below (better / worse than the baseline). Under each table, a
# reading generated from it, and the choices made: on validation users, or on test users where a
# candidate has no validation run (marked †).

# %%
tables = gr.build_tables(results, runner.preset.n_boot, seed)
display(Markdown(f"▲ / ▼: Holm-adjusted p below α = {gr.ALPHA:g}."))
for number, table in enumerate(tables, 1):
    display(gr.style_table(table, f"ch6-{table.dataset}", shown, f"Table 6.{number} · ",
                           runner.preset.n_boot, seed))  # fmt: skip
    display(Markdown(f"**Reading.** {gr.reading(table)}\n\n{gr.notes_text(table)}"))

# %% [markdown]
# The same rows in one figure, NDCG@10 only: each published row's mean and 95% interval on each
# dataset (a colour per dataset), in the tables' order; the dotted line is a uniformly random ranking
# of the 20 candidates. A row with no published dataset is left out.

# %%
gr.forest(tables, runner.preset.n_boot, seed)
plt.show()

# %% [markdown]
# ## 6.3 Reading the tables
#
# Across the tables, per group of rows: how many rows there are, how many are published, and how many
# of those compared with their baseline are better or worse after Holm's correction within their table,
# or not distinguishable from it. A row that is not distinguishable from its baseline at this number of
# users is not shown to be equal to it: the intervals in the tables say how large a difference the data
# still allow.

# %%
caption = f"Rows of the {len(tables)} tables above, by group · profile {shown}"
display(report.styled(gr.tally(tables), "ch6-tally", caption))

# %% [markdown]
# ## Summary of this chapter's checks

# %%
checks.check(
    "published rows on other users than their table's first row",
    sum(gr.mismatched_users(t) for t in tables),
    0,
    kind="identity",
    fmt="{:.0f}",
    tfmt="{:g}",
)
checks.check(
    "largest |mean from the ranks − the summary's stored mean|",
    max([gr.stored_mean_gap(t) for t in tables], default=0.0),
    1e-9,
    kind="identity",
)
display(checks.table())
checks.assert_all()
out = {
    "checks": checks.as_dict(),
    "tables_profile": shown,
    "published": len(tasks) - len(missing),
    "missing": len(missing),
    "rows": {t.dataset: gr.rows_json(t) for t in tables},
    "provenance": prov.finish().as_dict(),
}
path = write_json(results_dir(profile) / "06_results.json", out)
print("results written to", path.relative_to(path.parents[2]))

# %% tags=["remove-input", "nbval-ignore-output"]
prov.finish()

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
# # 2. The LLM as an in-context-learning recommender, on real data
#
# **The setting of the paper** (arXiv 2504.04386 {cite}`lrgd2025`, from its abstract): an LLM recommends
# the next item from a prompt made of task instructions $X_T$, demonstrations $X_D$ (other users'
# histories followed by what they chose next) and the user's own history. Chapter 1 showed that such a
# prompt *is* a dual model trained on $X_D$; this chapter builds the recommender itself and measures what
# it does on real sequential-recommendation data, next to simple non-LLM references on the *same*
# candidates. Everything here is our own implementation; the paper's numbers are not available to us.
#
# **Protocol.** Leave-one-out splits (a user's last item is the test target, the one before it the
# validation target, the rest is training data). Each user gets $N = 20$ candidates: the target and 19
# items the user never touched, drawn with a seed and saved, so every method ranks identical lists.
# The LLM scores each candidate title by its log-likelihood as the continuation of the prompt; the
# prompt is encoded once and its key/value cache shared by all 20 titles (`lrgd.rec.rank`). Metrics are
# HR@k, NDCG@k and MRR of the target's rank, with bootstrap 95% intervals over users; two methods on
# the same users are compared by a paired test (`lrgd.metrics`). Every choice — the score variant, the
# best LLM row, the best reference — is made on validation users, never on the test users it is then
# measured on. Every number below comes from the resumable runner behind `python -m lrgd evaluate`
# (`lrgd.rec.runner`), which keeps one JSON line per user under `results/<profile>/partial/`.

# %% tags=["parameters"]
profile = (
    "ci"  # ci | full | gpu — users per dataset and conditions (lrgd.config: the profile's .eval section)
)
device = "auto"  # auto | cpu | cuda
dtype = "auto"  # the LLM's dtype: auto (bfloat16 on cuda, float32 elsewhere) | float32 | bfloat16
model = "smollm2-135m"  # smollm2-135m | gemma3-270m | /path/to/a/local/hf-model
seed = 0
n_users = None  # test users per dataset (None: the profile's)

# %% tags=["hide-input"]
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display
from scipy.stats import spearmanr

from lrgd.config import get_profile, resolve_device, results_dir
from lrgd.metrics import expected_random_metrics, format_p, holm
from lrgd.provenance import Provenance
from lrgd.rec import report
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import DATASETS
from lrgd.rec.runner import Runner
from lrgd.results import write_json

P = get_profile(profile).eval
dev = resolve_device(device)
n_users = n_users or P.n_users
runner = Runner(profile, dev, quiet=True, dtype=dtype)
prov = Provenance(profile=profile, device=dev, seed=seed, dataset=", ".join(P.table_datasets))
lm = runner.lm(model)
prov.set_model(lm.info.name, lm.info.source_file, lm.info.sha256)
plt.rcParams.update({"figure.dpi": 110, "figure.figsize": (6.4, 3.6)})
users_label = "all" if n_users is None else n_users
print(f"profile={profile} device={dev} dtype={runner.dtype} model={lm.info.name} seed={seed} "
      f"test users per dataset={users_label}")  # fmt: skip

# %% tags=["hide-input"]
refs = ("ref-random", "ref-popularity", "ref-bm25", "ref-markov")


def cfg(dataset: str, method: str, k: int = 0, **kw) -> EvalConfig:
    """One condition with this page's model, seed and users (the selectors' parameters: the profile's)."""
    kw.setdefault("n_users", n_users)
    return EvalConfig(dataset, method, k, model=model, seed=seed, **kw)


def k_of(method: str) -> int:
    """Demonstrations of a table row: 0 for zero-shot and the references, the profile's k otherwise."""
    return 0 if method == "zero-shot" or method.startswith("ref-") else P.table_k


def var_of(method: str) -> str:
    """The score variant a row is read with: the one chosen in §2.3 for LLM rows, "score" for references."""
    return "score" if method.startswith("ref-") else variant


def diff(a: dict, b: dict, method_a: str = "zero-shot", method_b: str = "zero-shot") -> dict:
    """Paired NDCG@10 of result ``a`` minus result ``b`` (same users, same candidates): {diff, lo, hi, p}."""
    return report.paired(a, b, var_of(method_a), var_of(method_b), P.n_boot, seed)


def show(df: pd.DataFrame, uuid: str, caption: str | None = None, precision: int = 3, formats=None) -> None:
    """Render ``df`` as an HTML table (fixed id: re-executions render identically)."""
    display(report.styled(df, f"ch2-{uuid}", caption, precision, formats))


# %% [markdown]
# ## 2.1 The data
#
# Five public datasets, read by `lrgd.rec.data` from their distributed files: Amazon Beauty and Toys & Games
# (2014 5-core) {cite}`mcauley2015image,he2016ups`, Amazon Video Games 2018 as processed by LLMRank
# {cite}`hou2024llmrank` and Amazon Industrial & Scientific 2018 {cite}`ni2019justifying`, and
# MovieLens-100k {cite}`harper2015movielens` (titles with their release year). The statistics are
# computed by the loaders on this run; the table of methods uses four of them (Scientific appears only
# in the statistics).

# %%
rows = {}
for name in DATASETS:
    st = runner.data(name)
    s = st.ds.stats()
    rows[name] = {
        "users": s["users"],
        "items": s["items"],
        "interactions": s["interactions"],
        "density %": 100 * s["density"],
        "mean length": s["mean_len"],
        "median length": s["median_len"],
        "untitled items": s["untitled"],
        "test users (≥3 items)": len(st.split.test),
    }
stats = pd.DataFrame.from_dict(rows, orient="index")
formats = {"density %": "{:.3f}", "mean length": "{:.1f}", "median length": "{:.0f}"}
show(stats, "stats", "dataset statistics, computed by the loaders", formats=formats)

# %% [markdown]
# ## 2.2 The prompt, as the model sees it
#
# Instruction, $k$ demonstrations, then the user's last $h = 10$ titles and the cue `Next:`. SmolLM2 is an
# instruct model, so the text is one user turn of its chat template and the assistant turn is opened;
# a base model (Gemma-3-270m) gets the plain text. A candidate is scored as the assistant's answer: the
# summed log-probability of its title tokens. The candidates are **not** listed in the prompt (that is a
# variant, tested in §2.6). Demonstrations come from other users' *training* sequences; a leakage guard
# refuses any demonstration that shows the evaluated user's held-out items (`lrgd.rec.leakage`). That
# guard also refuses every other user's transition *into* the target, so here no demonstration can point
# at the target; chapter 2b measures what demonstrations can add without that restriction. The
# prompt below is the one the runner scores (`runner.user_prompt`, fitted to the model's context window),
# for a test user of Amazon Games with $k = 2$ random demonstrations:

# %%
from lrgd.rec.prompts import build_prompt, null_prompt_parts
from lrgd.rec.rank import joint_tokenisation_matches

games = runner.data("amazon-games")
example = cfg("amazon-games", "random", 2)
up = runner.user_prompt(example, runner.users(example)[0])
print(up.prompt.text)
spans = {n: b - a for n, (a, b) in up.prompt.spans.items()}
print("token spans:", spans, "· total", len(up.prompt.input_ids), "tokens")
print("held-out target (never in the prompt):", games.ds.title(up.target))
null = build_prompt(lm.tokenizer, null_prompt_parts(), chat=lm.info.chat)
print("\nthe history-free null prompt used by PMI:\n" + null.text)

# %% [markdown]
# **Is scoring on a cached prompt exact?** The cached scorer feeds the prompt's tokens and each title's
# tokens separately. That equals the model's likelihood of the joint text only if tokenising
# prompt + title jointly gives the same tokens. We check every (user, candidate) pair of the table's
# zero-shot prompts, as the runner builds them:

# %%
checked = agree = 0
for name in P.table_datasets:
    zero = cfg(name, "zero-shot")
    users = runner.users(zero)
    cands = runner.candidates(zero, users)
    for u in users:
        p = runner.user_prompt(zero, u, cands[u])
        ids = p.prompt.input_ids.tolist()
        for title, cont in zip(p.titles, p.continuations):
            agree += joint_tokenisation_matches(lm.tokenizer, p.prompt.text, ids, list(cont), p.sep, title)
            checked += 1
print(f"separate = joint tokenisation in {agree}/{checked} (user, candidate) pairs")

# %% [markdown]
# ## 2.3 Three ways to turn log-probabilities into a ranking
#
# For a title $y = (y_1, \dots, y_L)$ after prompt $x$:
#
# $$
# s_{\text{sum}} = \sum_{t=1}^{L} \log p(y_t \mid x, y_{<t}), \qquad
# s_{\text{mean}} = s_{\text{sum}} / L, \qquad
# s_{\text{PMI}} = s_{\text{sum}}(x) - s_{\text{sum}}(x_\varnothing),
# $$ (eq-scores)
#
# where $x_\varnothing$ is the history-free null prompt above. $s_{\text{sum}}$ penalises every extra
# token, so it should favour short titles; $s_{\text{mean}}$ removes that but rewards long, predictable
# titles; $s_{\text{PMI}}$ asks how much the user's context *raised* the title's probability. All three
# come from the same forward passes. The variant is **chosen on validation users** (each user's
# second-to-last item), zero-shot, pooled over the profile's validation datasets (Games and MovieLens at
# `ci`, all four at `full`), and then fixed for every test table.

# %%
variant, pooled, valid = runner.validation_variant(model, seed)
vt = pd.DataFrame(
    {name: {v: r["metrics"][v]["NDCG@10"]["mean"] for v in r["metrics"]} for name, r in valid.items()}
).T
vt.loc["pooled"] = pooled
caption = f"validation NDCG@10, zero-shot, {P.n_valid_users} validation users per dataset"
show(vt, "variant", f"{caption} ({len(valid)} datasets)")
print(f"chosen score variant for {lm.info.name}: {variant}")

# %% [markdown]
# ## 2.4 Methods × datasets
#
# LLM rows differ only in the demonstrations ($k = 2$ unless zero-shot): **random** other users,
# **similarity** (the pool users whose history embedding, all-MiniLM-L6-v2 {cite}`reimers2019sentence`,
# is closest in cosine to the user's), and at the `full` profile also **recent** (demonstrations that
# continue the user's most recent item) and **popular** (demonstrations whose next item is popular).
# At `ci` the demonstration methods run on Games and MovieLens only (short titles, cheap prompts); Beauty
# and Toys get the zero-shot LLM and the references.
# The references use no LLM: **random**, **popularity** (training interactions), **BM25** between a
# candidate's title and the user's history titles {cite}`robertson2009bm25`, and a first-order
# **Markov** chain of item-to-item transitions.

# %%
results: dict[tuple[str, str], dict] = {}
for name in P.table_datasets:
    for m in refs:
        results[name, m] = runner.run(cfg(name, m))
    for m in P.table_methods:
        if m == "zero-shot" or name in P.icl_datasets:
            results[name, m] = runner.run(cfg(name, m, k_of(m)))
llm_ran = {name: [m for m in P.table_methods if (name, m) in results] for name in P.table_datasets}
methods = list(refs) + list(P.table_methods)
label = {
    m: m.replace("ref-", "") + " (no LLM)"
    if m.startswith("ref-")
    else f"LLM {m}" + (f" k={k_of(m)}" * (k_of(m) > 0))
    for m in methods
}


# %%
def cell(name: str, method: str, metric: str) -> str:
    if (name, method) not in results:
        return f"not run at {profile}"
    return report.ci_text(results[name, method]["metrics"][var_of(method)][metric])


table = pd.DataFrame(
    {
        (n, met): {label[m]: cell(n, m, met) for m in methods}
        for n in P.table_datasets
        for met in ("NDCG@10", "HR@10")
    }
)
rnd = expected_random_metrics(20)
show(
    table,
    "table",
    f"mean [95% bootstrap CI] over {users_label} test users per dataset; LLM rows use the {variant} score; "
    f"a uniformly random rank gives NDCG@10 {rnd['NDCG@10']:.3f}, HR@10 {rnd['HR@10']:.3f}",
)

# %%
fig, axes = plt.subplots(1, len(P.table_datasets), figsize=(3.2 * len(P.table_datasets), 3.4), sharey=True)
for ax, name in zip(np.atleast_1d(axes), P.table_datasets):
    for j, m in enumerate(methods):
        if (name, m) not in results:
            continue
        x = results[name, m]["metrics"][var_of(m)]["NDCG@10"]
        xerr = [[x["mean"] - x["lo"]], [x["hi"] - x["mean"]]]
        ax.errorbar(x["mean"], j, xerr=xerr, fmt="o", color="C0" if m.startswith("ref-") else "C3")
    ax.axvline(rnd["NDCG@10"], color="k", lw=0.6, ls=":")
    ax.set(title=name, xlabel="NDCG@10", xlim=(0, 1))
np.atleast_1d(axes)[0].set_yticks(range(len(methods)), [label[m] for m in methods])
fig.tight_layout()
plt.show()

# %% [markdown]
# Two questions follow from the table: do demonstrations help the LLM, and does the best LLM row beat
# the best reference? "Best" must not be chosen on the users it is then compared on: the row that was
# luckiest on these test users would look better than it is. So every table method also runs on each
# dataset's **validation users** (the same protocol, one item earlier), and the best LLM row and the
# best reference by validation NDCG@10 are the ones compared on test users.

# %%
val_res = {}
for name in P.table_datasets:
    llm_choice = llm_ran[name] if len(llm_ran[name]) > 1 else []  # one LLM row: nothing to choose
    for m in [*refs, *llm_choice]:
        val_res[name, m] = runner.run(cfg(name, m, k_of(m), split="valid", n_users=P.n_valid_users))
best = {}
for name in P.table_datasets:
    llm = llm_ran[name]
    best_llm = llm[0] if len(llm) == 1 else report.best_method({m: val_res[name, m] for m in llm}, var_of)
    best[name] = (best_llm, report.best_method({m: val_res[name, m] for m in refs}, var_of))
vv = pd.DataFrame(
    {n: {label[m]: val_res[n, m]["metrics"][var_of(m)]["NDCG@10"]["mean"] for m in methods if (n, m) in val_res}
     for n in P.table_datasets}
)  # fmt: skip
vv = vv.astype(object)  # the two rows below hold labels
vv.loc["→ best LLM row"] = [label[best[n][0]] for n in vv.columns]
vv.loc["→ best reference"] = [label[best[n][1]] for n in vv.columns]
show(
    vv, "valbest", f"validation NDCG@10 ({P.n_valid_users} validation users per dataset) and the rows chosen"
)

# %% [markdown]
# Paired differences on the test users (same users, same candidates): the mean difference with its
# bootstrap 95% interval over users, and a two-sided p-value from a paired sign-flip permutation test
# (under "no difference" each user's difference is as likely to be negative as positive). With several
# comparisons in one table some small p-values arise by chance, so the table also gives Holm's adjusted
# p-value over all its rows; read the adjusted one.

# %%
rows, diffs = [], {}
for name in P.table_datasets:
    best_llm, best_ref = best[name]
    pairs = [(m, "zero-shot") for m in llm_ran[name] if m != "zero-shot"] + [(best_llm, best_ref)]
    for a, b in pairs:
        diffs[name, a, b] = d = diff(results[name, a], results[name, b], a, b)
        rows.append({"dataset": name, "comparison": f"{label[a]} − {label[b]}", **d})
paired_table = report.with_holm(rows).set_index(["dataset", "comparison"])
holm_p = dict(zip(diffs, holm([d["p"] for d in diffs.values()])))  # the table's adjusted p, by key
show(
    paired_table, "paired", f"paired ΔNDCG@10 over {users_label} test users per dataset (permutation p, Holm)"
)

# %% [markdown]
# **Cost.** Seconds per user per condition, measured when each user was computed: the prompt's forward
# pass plus the 20 titles on its cache. The null-prompt pass for PMI (the 20 titles after the null
# prompt) is computed once per user and shared by every condition on the same candidates. More
# demonstrations mean a longer prompt, hence the cost.

# %%
cost = {}
for name in P.table_datasets:
    row = {label[m]: results[name, m]["provenance"]["seconds_per_user"] for m in llm_ran[name]}
    row["null pass (once per user)"] = sum(
        results[name, m]["provenance"]["null_seconds_per_user"] for m in llm_ran[name]
    )
    row["prompt tokens, k=0"] = results[name, "zero-shot"]["prompt_tokens"]
    if name in P.icl_datasets:
        row[f"prompt tokens, random k={P.table_k}"] = results[name, "random"]["prompt_tokens"]
    cost[name] = row
caption = (
    f"seconds per user per condition on {dev} ({torch.get_num_threads()} threads), and mean prompt length"
)
show(pd.DataFrame(cost), "cost", caption, precision=2)

# %% [markdown]
# **Which titles does each score favour?** Within each user's 20 candidates, the Spearman correlation
# between a title's token count and its score (zero-shot, all table datasets), and how long the top
# pick is compared with the average candidate:

# %%
rows = {}
for v in ("summed", "mean", "pmi"):
    rhos, ratio = [], []
    for name in P.table_datasets:
        for r in runner.records(cfg(name, "zero-shot")):
            n, summed = np.array(r["title_tokens"], dtype=float), np.array(r["summed"])
            s = {"summed": summed, "mean": summed / n, "pmi": summed - np.array(r["null"])}[v]
            if n.std() > 0:
                rhos.append(spearmanr(n, s).statistic)
            ratio.append(n[np.argmax(s)] / n.mean())
    rows[v] = {"mean Spearman(length, score)": np.mean(rhos), "top pick length / mean length": np.mean(ratio)}
lengths = pd.DataFrame(rows).T
show(lengths, "lengths", "title length and score, zero-shot, within each user's candidates", precision=2)

# %% [markdown]
# ## 2.5 More demonstrations?
#
# The dual-model reading of chapter 1 says each demonstration is one more training example for the
# implicit model. If that training helped here, NDCG should rise with $k$.

# %%
n_curve = min(P.curve_users, n_users) if n_users and P.curve_users else (P.curve_users or n_users)
curve = {
    k: runner.run(cfg(P.curve_dataset, P.curve_method if k else "zero-shot", k, n_users=n_curve))
    for k in P.curve_ks
}
popular = runner.run(cfg(P.curve_dataset, "ref-popularity", n_users=n_curve))["metrics"]["score"]["NDCG@10"]
fig, ax = plt.subplots()
for v, style in (("summed", "o--"), ("mean", "s--"), ("pmi", "^-")):
    ndcg = [curve[k]["metrics"][v]["NDCG@10"] for k in P.curve_ks]
    ax.plot(P.curve_ks, [x["mean"] for x in ndcg], style, label=v + " (chosen)" * (v == variant))
    if v == variant:
        ax.fill_between(P.curve_ks, [x["lo"] for x in ndcg], [x["hi"] for x in ndcg], alpha=0.2)
ax.axhline(popular["mean"], color="k", lw=0.8, ls=":", label="popularity (no LLM)")
title = f"{P.curve_dataset}, {P.curve_method} demonstrations, {n_curve} users"
ax.set(xlabel="demonstrations k", ylabel="NDCG@10", title=title, xticks=list(P.curve_ks))
ax.legend(fontsize=8)
plt.show()

# %%
kc = pd.DataFrame(
    {
        k: {
            "NDCG@10": curve[k]["metrics"][variant]["NDCG@10"]["mean"],
            "HR@10": curve[k]["metrics"][variant]["HR@10"]["mean"],
            "prompt tokens": curve[k]["prompt_tokens"],
        }
        for k in P.curve_ks
    }
).T
kc.index.name = "k"
caption = f"{P.curve_dataset}: NDCG@10 and HR@10 ({variant} score) and prompt length by k"
show(kc, "curve", caption, formats={"prompt tokens": "{:.1f}"})
dk = diff(curve[max(P.curve_ks)], curve[0])
print(
    f"k={max(P.curve_ks)} − k=0: ΔNDCG@10 {dk['diff']:+.3f} [{dk['lo']:+.3f}, {dk['hi']:+.3f}], "
    f"permutation p {format_p(dk['p'])} (one comparison: no adjustment)"
)

# %% [markdown]
# ## 2.6 Position bias: does the order of the candidates matter?
#
# Scored as continuations, a candidate never sees the others, so the order in which they are fed cannot
# matter; we check it by reversing the order. When the candidates are **listed in the prompt**, the
# order enters the context, and small models are known to copy from such lists. We list the 20
# candidates (zero-shot) in the sampled order and reversed, and ask where in the list the model's top
# pick sits.

# %%
nb = min(P.bias_users, n_users) if n_users and P.bias_users else (P.bias_users or n_users)


def by_item(c: EvalConfig) -> list[dict[str, tuple[float, float]]]:
    """Per user: item → (summed log-prob, score under the chosen variant)."""
    out = []
    for r in runner.records(c):
        s, n, z = np.array(r["summed"]), np.array(r["title_tokens"]), np.array(r["null"])
        v = {"summed": s, "mean": s / n, "pmi": s - z}[variant]
        out.append({i: (float(a), float(b)) for i, a, b in zip(r["candidates"], s, v)})
    return out


conds = {
    "not listed": cfg(P.bias_dataset, "zero-shot", n_users=nb),
    "not listed, reversed": cfg(P.bias_dataset, "zero-shot", n_users=min(nb, 5), order="reversed"),
    "listed, sampled order": cfg(P.bias_dataset, "zero-shot", n_users=nb, list_candidates=True),
    "listed, reversed order": cfg(
        P.bias_dataset, "zero-shot", n_users=nb, list_candidates=True, order="reversed"
    ),
}
res = {name: runner.run(c) for name, c in conds.items()}
items = {name: by_item(c) for name, c in conds.items()}
plain, rev = items["not listed"], items["not listed, reversed"]
gap = max(abs(u[i][0] - plain[j][i][0]) for j, u in enumerate(rev) for i in u)
print(
    f"not listed: max |Δ summed log-prob| after reversing the order, {len(rev)} users: {gap:.1e} (order-free up to float rounding)"
)

# %%
bias_rows = {}
for name in ("not listed", "listed, sampled order", "listed, reversed order"):
    row = {m: res[name]["metrics"][variant][m]["mean"] for m in ("NDCG@10", "HR@10")}
    if name.startswith("listed"):
        recs = runner.records(conds[name])
        top = [
            int(np.argmax([items[name][j][i][1] for i in r["candidates"]])) + 1 for j, r in enumerate(recs)
        ]
        pos = np.array(top)
        row["top pick at list pos. 1–5"] = np.mean(pos <= 5)
        row["top pick at pos. 16–20"] = np.mean(pos >= 16)
        gain = [np.mean([u[i][0] - plain[j][i][0] for i in u]) for j, u in enumerate(items[name])]
        row["log-prob gain from listing"] = np.mean(gain)
    bias_rows[name] = row
show(pd.DataFrame(bias_rows).T, "bias", f"{P.bias_dataset}, zero-shot, {nb} users ({variant} score)")
a_, b_ = items["listed, sampled order"], items["listed, reversed order"]
same_top = np.mean([max(u, key=lambda i: u[i][1]) == max(w, key=lambda i: w[i][1]) for u, w in zip(a_, b_)])
rho = np.mean([spearmanr([u[i][1] for i in u], [w[i][1] for i in u]).statistic for u, w in zip(a_, b_)])
dl = diff(res["listed, sampled order"], res["not listed"])
print(
    f"listed, sampled vs reversed order: same top item for {same_top:.2f} of users, mean Spearman of the "
    f"scores {rho:.2f}\nlisted − not listed: ΔNDCG@10 {dl['diff']:+.3f} [{dl['lo']:+.3f}, {dl['hi']:+.3f}], "
    f"permutation p {format_p(dl['p'])}, over {nb} users of {P.bias_dataset}; with no position effect "
    "each 5-position block would hold 0.25 of the top picks"
)

# %% [markdown]
# ## 2.7 Generate and parse
#
# The other way to use an LLM as a ranker: list the candidates and let the model *write* a ranking; its
# lines are mapped back to candidates by fuzzy title matching, and candidates it never names are ranked
# after the named ones (ties by a seeded hash). Generation is sequential and slow on a CPU, so it runs on
# few users here.

# %%
generate = cfg(P.bias_dataset, "zero-shot", n_users=P.generate_users, mode="generate", max_new_tokens=64)
gen = runner.run(generate)
print(
    f"{gen['n_users']} users of {P.bias_dataset}: parse failures (no candidate named) {gen['parse_failure_rate']:.2f}, "
    f"candidates named per answer {gen['mean_named']:.1f} of 20, NDCG@10 {gen['metrics']['generated']['NDCG@10']['mean']:.3f}"
)
print("first answer, verbatim:\n" + runner.records(generate)[0]["text"][:500])

# %% [markdown]
# ## 2.8 What this model can and cannot show
#
# The statements below are computed from this run's numbers, so they stay true when the profile, the
# model or the seed change. A difference is called a gain or a loss when its bootstrap 95% interval
# excludes zero; the Holm-adjusted p-value of the same comparison is given with it.


# %%
def said(d: dict, key=None) -> str:
    """A paired difference in words; rows of the paired table with their Holm-adjusted p."""
    return report.in_words(d, holm_p[key], "p (Holm)") if key in holm_p else report.in_words(d)


chance = rnd["NDCG@10"]
above = [n for n in P.table_datasets if results[n, "zero-shot"]["metrics"][variant]["NDCG@10"]["lo"] > chance]
rhos = ", ".join(f"{v} {lengths.loc[v].iloc[0]:+.2f}" for v in lengths.index)
lines = [
    f"- **Above chance:** the zero-shot LLM ({variant} score) has CI low > {chance:.3f} on {len(above)} of "
    f"{len(P.table_datasets)} datasets: {', '.join(above) or 'none'}.",
    f"- **Score variant** chosen on validation: {variant}; mean Spearman(length, score): {rhos}.",
]
lines += [
    f"- **Demonstrations,** {n}, {label[a]} vs zero-shot: {said(d, (n, a, b))}."
    for (n, a, b), d in diffs.items()
    if b == "zero-shot"
]
lines += [
    f"- **Best LLM row vs best reference** (both chosen on validation), {n}: {label[a]} vs {label[b]}: {said(d, (n, a, b))}."
    for (n, a, b), d in diffs.items()
    if b != "zero-shot"
]
lines.append(f"- **More demonstrations,** {P.curve_dataset}, k={max(P.curve_ks)} vs k=0: {said(dk)}.")
lines.append(
    f"- **Listing the candidates** in the prompt vs not: {said(dl)}; same top item after reversing the list for {same_top:.2f} of users."
)
display(Markdown("\n".join(lines)))

# %% [markdown]
# **Reading.** Generated from the same numbers; the interpretation in it (what a score rewards, what the
# references use) does not depend on the run.


# %%
def among(names: list[str], prefix: str = "") -> str:
    return f" ({prefix}{', '.join(names)})" if names else ""


len_rho = lengths["mean Spearman(length, score)"]
demo = [key for key in diffs if key[2] == "zero-shot"]
gains = [f"{n}, {label[a]}" for (n, a, b) in demo if diffs[n, a, b]["lo"] > 0]
ref_ahead = [n for (n, a, b), d in diffs.items() if b != "zero-shot" and d["hi"] < 0]
no_icl = (
    " Nothing here suggests that this model learns the task in context, which chapter 3's demonstration"
    " effect needs; hence the `gpu` profile with a larger model."
) * (not gains)
display(
    Markdown(f"""
- **Can it rank?** Zero-shot likelihood scoring puts the target above chance on {len(above)} of
  {len(P.table_datasets)} datasets{among([n for n in P.table_datasets if n not in above], "not on ")}.
- **The score matters.** Summed log-probability counts every token against a title (mean Spearman with
  length {len_rho["summed"]:+.2f}), the per-token mean does not ({len_rho["mean"]:+.2f}), PMI subtracts what the
  null prompt already predicts ({len_rho["pmi"]:+.2f}); validation picked {variant}.
- **Demonstrations:** {len(gains)} of {len(demo)} demonstration rows gain over zero-shot{among(gains)}.{no_icl}
- **References** use the training data that the LLM sees only through $k$ demonstrations; the best
  reference is ahead of the best LLM row on {len(ref_ahead)} of {len(P.table_datasets)} datasets{among(ref_ahead)}.
- **Listing the candidates** moves each listed title's log-probability by
  {bias_rows["listed, sampled order"]["log-prob gain from listing"]:+.1f} nats on average; NDCG@10:
  {report.verdict(dl)}. Reversing the list kept the top pick for {same_top:.2f} of users. Likelihood
  scoring without a list is order-free by construction and is the default.
""")
)

# %%
summary = {
    "variant": variant,
    "validation_ndcg10": pooled,
    "best_on_validation": {n: {"llm": a, "reference": b} for n, (a, b) in best.items()},
    "table": {
        f"{n}|{m}": {met: results[n, m]["metrics"][var_of(m)][met] for met in ("NDCG@10", "HR@10", "MRR")}
        for (n, m) in results
    },
    "paired": {f"{n}|{a}|{b}": {**d, "p_holm": holm_p[n, a, b]} for (n, a, b), d in diffs.items()},
    "curve": {k: curve[k]["metrics"][variant]["NDCG@10"] for k in P.curve_ks},
    "position_bias": bias_rows,
    "generate": {"parse_failure_rate": gen["parse_failure_rate"], "mean_named": gen["mean_named"]},
    "tokenisation_agreement": [agree, checked],
    "provenance": prov.finish().as_dict(),
}
out = write_json(results_dir(profile) / "02_recommender.json", json.loads(json.dumps(summary, default=float)))
print("results written to", out.relative_to(out.parents[2]))

# %% tags=["remove-input", "nbval-ignore-output"]
prov.finish()

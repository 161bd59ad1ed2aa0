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
# # 4. Robust demonstrations and the two-stage optimiser
#
# The paper's abstract makes two claims this chapter tests: integrating **perturbations and
# regularisations** into LRGD makes the recommender robust, and a **two-stage optimisation** of the
# demonstrations improves them, **prevents performance collapse** and keeps **adapting over time**. Its
# formulas are not available: everything below is **our reconstruction** in the dual-model terms of
# chapters 1 and 3, and each claimed effect is measured — or refuted — on a model where the truth is
# known: the tiny decoder of testbed B (chapter 1b). The last section carries the perturbation study to
# real data with the reader of chapter 2b.
#
# Two sections carry the optimiser to real data with the reader of chapter 2b: MovieLens-100k in calendar
# windows (§4.6b) and one optimised global set of demonstrations (§4.8); §4.7 perturbs the reader's
# demonstrations. SmolLM2 is not optimised here: chapter 2 measured that it does not gain from
# demonstrations on these datasets (a better choice of demonstrations cannot make them help a model that
# does not read them), §4.7 tests whether it reads them at all, and §4.8 prints what one run of the
# optimiser would cost on it.

# %% tags=["parameters"]
profile = "ci"  # ci | full | gpu — sizes: the profile's .robust section (lrgd.config)
device = "auto"  # auto | cpu | cuda (the tiny decoder always runs on the CPU)
dtype = "auto"  # §4.8 reads chapter 2's LLM run at this dtype (auto: bfloat16 on cuda, float32 elsewhere)
seed = 0

# %% tags=["hide-input"]
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from lrgd.checks import Checks
from lrgd.config import get_profile, resolve_device, results_dir
from lrgd.errors import LRGDError
from lrgd.metrics import format_p, holm, spearman_ci
from lrgd.provenance import Provenance
from lrgd.rec import report
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.runner import Runner
from lrgd.results import committed_weights, file_hash, write_json
from lrgd.robust import real
from lrgd.robust import real_perturb as rp
from lrgd.robust import testbed as rt
from lrgd.robust import windows as rwin
from lrgd.robust.runner_objective import split_users
from lrgd.testbeds import recworld as rw
from lrgd.testbeds import tiny_decoder as td

prof = get_profile(profile)
R = prof.robust
dev = resolve_device(device)
prov = Provenance(profile=profile, device=dev, seed=seed, dataset="testbed B; ml-100k")
checks = Checks()
plt.rcParams.update({"figure.dpi": 110})
torch.set_num_threads(1)  # the tiny decoder is fastest (and deterministic) on one thread
base = rw.RecWorld.generate(prof.world, seed)
with committed_weights(td.weights_path(base, prof.decoder, seed), profile):  # chapter 1b's decoder (cached)
    decoder = td.load_or_train(base, prof.decoder, seed=seed, device="cpu")
runner = Runner(profile, dev, quiet=True, dtype=dtype)  # chapter 2's runner: the reader (§4.6b–4.8)
reader = prof.reader.models[0]  # chapter 2b's trained in-context model
print(f"profile={profile} dtype={runner.dtype} seed={seed} users={R.n_users} pool={R.n_pool} k={R.k}")


def show(df: pd.DataFrame, uuid: str, caption: str | None = None, precision: int = 3, formats=None) -> None:
    """Render ``df`` as an HTML table (fixed id: re-executions render identically)."""
    display(report.styled(df, f"ch4-{uuid}", caption, precision, formats))


def ci(mean: float, lo: float, hi: float, fmt: str = "{:+.3f}") -> str:
    return f"{fmt.format(mean)} [{fmt.format(lo)}, {fmt.format(hi)}]"


# %% [markdown]
# Every testbed number of sections 4.1–4.6 is computed by one call (`lrgd.robust.testbed.chapter_tables`),
# cached under `results/<profile>/robust/` by the profile's sections, the seed, the decoder's weights and
# the source of the code that computes it, so a change anywhere recomputes it.

# %% tags=["remove-output", "nbval-ignore-output"]
T, from_cache = rt.chapter_tables(decoder.model, file_hash(decoder.path, 16), prof, seed)
print("testbed tables", "read from the cache" if from_cache else "computed")


# %% [markdown]
# ## 4.1 A testbed fit for selection
#
# Chapter 3 found that no legal signal could choose demonstrations on testbed B: the only item of a user
# that a selector may look at without peeking at the test target was the last *history* item, and
# history items follow a taste pulled towards the cluster centre, $u_{\text{hist}} = c + s\,(u - c)$, so
# they say little about the user's group. The refit world (`lrgd.testbeds.recworld`, our design) gives
# every user `n_valid_next` **validation next items** drawn, like the target, from the user's own taste
# at the time steps just before it (Eq. (B3)), lets users differ within a group (`user_noise`), and adds
# demonstration kinds the Bayes observer knows (`flipped`: a real demonstration with a random next item;
# `popular`: items drawn by popularity alone; `cluster`: another group of the same cluster). The items
# and groups are chapter 1b's, so its trained decoder reads this world unchanged.

# %%
info = T["info"].rename_axis(None)
show(info, "info", "what one item tells the observer about the user's group (nats; mean and 95% CI)")
gv = info.iloc[2]
gh = info.iloc[3]
checks.check("one validation next item tells more about the group than the last history item (lower CI − upper CI)",
             gv["lo"] - gh["hi"], 0.0, at_least=True, fmt="{:.3f}", tfmt="{:g}")  # fmt: skip

# %% [markdown]
# The Bayes "ceiling" of chapter 1b scored every condition with the *training* prior over demonstration
# kinds, so a trained model could beat it when a condition was far from that prior. The observer below
# knows the tested condition (the kinds' empirical shares, `kind_probs="condition"`): it is the ceiling
# *for that condition*, and the decoder is compared with it.

# %%
obs = T["observer"].rename_axis(None)
show(obs, "observer", f"NDCG@10 with 6 demonstrations of one kind ({R.n_users * 5} prompts)")
checks.check("the condition-aware observer is never below the training-prior one (smallest difference)",
             float((obs["observer, tested condition"] - obs["observer, training prior"]).min()), -0.01,
             at_least=True, fmt="{:+.3f}", tfmt="{:g}")  # fmt: skip

# %% [markdown]
# ## 4.2 A ranking-aligned Effect_D
#
# Chapter 3's Effect_D is the first-order change of the target's negative log-likelihood $L_u$. The
# evaluation ranks a candidate set, so a demonstration that raises every candidate alike lowers $L_u$ and
# changes no ranking. The ranking-aligned version (`loss="rank"`, our reconstruction) takes the same
# first-order formula on the contrastive loss
#
# $$
# L^{\text{rank}}_u = -\log \frac{\exp s_u(y)}{\sum_{c \in C_u} \exp s_u(c)},
# $$ (eq-rank-loss)
#
# the target's log-softmax over the candidate set's logits; only $\partial L_u / \partial o$ changes.
# Both losses and both rates (secant $\eta = Z_D/Z$; derivative $Z_D/Z_Z$, the exact $-dL/d\alpha$ at
# $\alpha = 0$) are scored against the true gains on the **test** target and, as a *legal* signal, on each
# user's first **validation** next item. Spearman $\rho$ pooled over all (demonstration, user) pairs and
# within users (the mean of per-user $\rho$), with 95% CIs over users.

# %%
vt = T["variants"]
cols = ["pooled ρ", "CI low", "CI high", "within ρ", "w. CI low", "w. CI high"]
keep = vt.index.get_level_values("gain").isin(["rank-loss drop", "NDCG@10 gain"])
show(vt[keep][cols], "variants", f"validation signal = {vt['source'].iloc[0]}; Spearman ρ of each Effect_D variant with the true gain "
     f"({R.variant_users} users × {prof.effect.testbed_pool} demonstrations)")  # fmt: skip
legal = vt.loc[("validation", "rank", "secant", "rank-loss drop")]
checks.check("Effect_D on the validation next item predicts the test rank-loss gain within users (lower CI)",
             legal["w. CI low"], 0.0, at_least=True, fmt="{:.3f}", tfmt="{:g}")  # fmt: skip


# %% tags=["remove-input"]
def rho_of(sig: str, loss: str, rate: str, gain: str, col: str = "within ρ") -> float:
    return float(vt.loc[(sig, loss, rate, gain), col])


display(
    Markdown(
        f"Read on the rank-loss gain: on the test target the rank loss's within-user ρ is "
        f"{rho_of('test', 'rank', 'secant', 'rank-loss drop'):.2f} against the NLL's "
        f"{rho_of('test', 'nll', 'secant', 'rank-loss drop'):.2f}; on the legal validation signal "
        f"{rho_of('validation', 'rank', 'secant', 'rank-loss drop'):.2f} against "
        f"{rho_of('validation', 'nll', 'secant', 'rank-loss drop'):.2f} (secant rate). Each loss predicts its own "
        "drop best; the validation signal is weaker than the test one because one validation item is a noisy "
        "sample of the user's taste, but it is a signal a selector may use."
    )
)

# %% [markdown]
# ## 4.3 Do demonstrations add? Pair interactions
#
# Picking the $k$ demonstrations with the largest single Effect_D assumes their effects add. For random
# pairs $(a, b)$ of pool demonstrations the true gains in rank loss over zero-shot on the test target,
# $g(a)$, $g(b)$ and $g(a, b)$, give the interaction $g(a, b) - g(a) - g(b)$ (zero if effects add).

# %%
pairs = T["pairs"]
rho_add = spearman_ci(pairs["g_a"] + pairs["g_b"], pairs["g_ab"], seed=seed, groups=pairs["user"].to_numpy())
r2 = 1 - pairs["interaction"].var() / pairs["g_ab"].var()
by = pairs.groupby("same group")["interaction"].agg(["mean", "std", "count"])
by = by.rename(index={True: "a and b from the same group", False: "from different groups"}).rename_axis(None)
show(by, "pairs", f"interaction g(a,b) − g(a) − g(b) in rank loss ({len(pairs)} (user, pair) draws)")
fig, ax = plt.subplots(figsize=(4.6, 3.6))
ax.scatter(pairs["g_a"] + pairs["g_b"], pairs["g_ab"], s=6, alpha=0.4)
lim = np.abs(pairs[["g_ab"]].to_numpy()).max()
ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
ax.set(xlabel="g(a) + g(b)", ylabel="g(a, b)", title="pair gain vs the sum of singles")
plt.show()

# %% tags=["remove-input"]
display(
    Markdown(
        f"The sum of single gains ranks pair gains with Spearman ρ {ci(*rho_add, fmt='{:.2f}')} (CI over users) "
        f"and explains a share {r2:.2f} of their variance: effects add only in part, so a set chosen by single "
        "scores can be improved by judging sets — the job of stage 2."
    )
)

# %% [markdown]
# ## 4.4 The two-stage optimiser, and collapse
#
# **Stage 1** ranks the pool by Effect_D (rank loss, secant) averaged over the user's first half of
# validation items and keeps the top $k$: $M$ demonstration passes and one forward and backward pass per
# validation item. **Stage 2** (`lrgd.robust.optimise.refine`) searches sets: every swap of one member for
# a pool demonstration outside the set, judged by the mean rank loss on the same *train* validation items,
#
# $$
# J(S) = \frac{1}{|U_{\text{train}}|} \sum_{v \in U_{\text{train}}} L^{\text{rank}}_v(S),
# $$ (eq-stage2)
#
# taking the best swap each iteration. With two validation items per user it can fit them and lose the
# test item — *collapse*. The guards: the user's other validation items are held out; the search stops
# when their loss stops improving (early stopping), returns the set that was best on them (keep-best),
# and may change at most `max_swaps` members of the stage-1 set (a trust region). The same search
# without guards runs for all `max_iters` iterations.

# %%
table = T["methods"].rename_axis(None)
show(table, "methods", f"test NDCG@10, {R.n_users} users, k = {R.k}, pool of {R.n_pool}; Δ paired with "
     "zero-shot; p: sign-flip permutation, Holm over the table", formats={"p": format_p, "p (Holm)": format_p})  # fmt: skip
two = table.loc["two-stage (guarded)"]
checks.check("two-stage (guarded) beats zero-shot on test users (lower CI of Δ)", two["Δ lo"], 0.0,
             at_least=True, fmt="{:+.3f}", tfmt="{:g}")  # fmt: skip

# %%
curves = {g: T[f"collapse {g}"] for g in ("unguarded", "guarded")}
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
for ax, (g, cv) in zip(axes, curves.items()):
    for col, style in zip(cv.columns, ("-o", "-s", "-^")):
        ax.plot(cv.index, cv[col], style, ms=4, label=col)
    ax.set(title=f"stage 2, {g}", xlabel="iteration (one swap each)")
axes[0].set_ylabel("mean rank loss (lower is better)")
axes[0].legend(frameon=False)
plt.show()

# %% tags=["remove-input"]
g_vs_u, g_vs_1 = T["comparisons"].loc["guarded − unguarded"], T["comparisons"].loc["guarded − stage 1"]
cu = curves["unguarded"]
display(
    Markdown(
        f"Without guards the train-validation loss falls from {cu.iloc[0, 0]:.3f} to {cu.iloc[-1, 0]:.3f} while "
        f"the test loss ends at {cu.iloc[-1, 2]:.3f} (best {cu['test'].min():.3f}). On test NDCG@10 the guarded "
        f"search differs from the unguarded one by {ci(g_vs_u['diff'], g_vs_u['lo'], g_vs_u['hi'])} "
        f"(p {format_p(g_vs_u['p'])}) and from stage 1 alone by {ci(g_vs_1['diff'], g_vs_1['lo'], g_vs_1['hi'])} "
        f"(p {format_p(g_vs_1['p'])})."
    )
)

# %% [markdown]
# **A trust region in prediction space.** The guards above limit how many members may change. A trust region
# can instead limit how far the demonstrations move the model's predictions (our reconstruction): stage 2
# may only step to sets $S$ whose candidate distribution stays close to the zero-shot one on the user's
# train validation items,
#
# $$
# \frac{1}{|U_{\text{train}}|} \sum_{v \in U_{\text{train}}} \mathrm{KL}\big(p_S(\cdot \mid v) \,\|\,
# p_{\text{zero-shot}}(\cdot \mid v)\big) \le \varepsilon,
# $$ (eq-kl-trust)
#
# with no other guard (no early stopping, no keep-best); $\varepsilon = \infty$ is the unguarded search. A
# search whose stage-1 start lies outside $\varepsilon$ may only move inside; with no improving move there it
# keeps its start. Centred on zero-shot, the region thus also judges where stage 1 put the set, and a start
# outside it can only move back toward zero-shot. A second centre bounds only stage 2's **step**: the same
# region around $p_{S_1}$, the predictions with the user's stage-1 set $S_1$ in place of
# $p_{\text{zero-shot}}$ (every search starts inside it, at KL 0). Both run on the first `sweep_users` test
# users.

# %%
tr = T["trust"]
centres = {"zero-shot": "around zero-shot", "start": "around the stage-1 set"}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for j, (a, name) in enumerate(centres.items()):
    d = tr[tr["around"] == a]
    x = np.arange(len(d)) + (j - 0.5) * 0.15
    axes[0].errorbar(x, d["ΔNDCG@10"], yerr=[d["ΔNDCG@10"] - d["Δ lo"], d["Δ hi"] - d["ΔNDCG@10"]], fmt="os"[j],
                     capsize=3, label=name)  # fmt: skip
    for col, color in (("held-out loss", "C1"), ("test loss", "C2")):
        axes[1].plot(x, d[col], "-o" if j == 0 else "--s", color=color, ms=4, label=f"{col}, {name}")
axes[0].axhline(0, color="k", lw=0.8)
axes[0].set(ylabel="test ΔNDCG@10 over zero-shot (95% CI)", title="KL trust region: accuracy")
axes[1].set(ylabel="mean rank loss", title="KL trust region: losses")
for ax in axes:
    labels = tr[tr["around"] == "zero-shot"]["ε"]
    ax.set(xticks=np.arange(len(labels)), xlabel="ε (trust-region radius)")
    ax.set_xticklabels(labels.str.replace(" (", "\n("), fontsize=8)
    ax.legend(frameon=False, fontsize=8)
plt.show()
show(tr.set_index(["around", "ε"])[["ΔNDCG@10", "Δ lo", "Δ hi", "held-out loss", "test loss", "KL (train items)",
                                    "inside ε"]],
     "trust", f"stage 2 inside the KL trust region, first {min(R.sweep_users, R.n_users)} test users")  # fmt: skip


# %% tags=["remove-input"]
def trust_reading(d: pd.DataFrame, name: str) -> str:
    """The ε sweep of one centre in words (every number from the table above)."""
    finite = d[d["eps"].notna()]
    inf_row, start = d.iloc[-1], d.iloc[0]
    best_hold, best_test = (
        finite.loc[finite["held-out loss"].idxmin()],
        finite.loc[finite["test loss"].idxmin()],
    )
    reached = ", ".join(f"{x:+.3f} at ε = {e}" for e, x in zip(finite["ε"], finite["ΔNDCG@10"]))
    vs_inf = "below" if best_test["test loss"] < inf_row["test loss"] else "not below"
    return (f"**{name.capitalize()}.** From the stage-1 start ({ci(start['ΔNDCG@10'], start['Δ lo'], start['Δ hi'])} "
            f"NDCG@10 over zero-shot) the search reaches {reached} and {inf_row['ΔNDCG@10']:+.3f} unguarded; "
            f"{finite['inside ε'].iloc[0]:.0%} of the users' sets end inside the smallest ε. Among finite ε the "
            f"lowest held-out loss is at ε = {best_hold['ε']} and the lowest test loss at ε = {best_test['ε']}, "
            f"{vs_inf} the unguarded search's ({inf_row['test loss']:.3f}).")  # fmt: skip


display(Markdown("\n\n".join(trust_reading(tr[tr["around"] == a], name) for a, name in centres.items())
                 + "\n\nA trust region guards against collapse only where the unguarded search overfits; the "
                 "test-loss column says whether it does here."))  # fmt: skip

# %% [markdown]
# **Popularity collapse.** Optimised demonstrations could pull every user toward the same items. Per method,
# over the test users' top-10 lists: catalogue **coverage@10** (distinct recommended items over the catalogue
# size) and the **Gini index** of how often each catalogue item is recommended,
# $G = \sum_{i,j} |x_i - x_j| / (2 n^2 \bar x)$ over the $n$ items' counts $x$ (0: every item equally often;
# $(n-1)/n$: one item takes every slot) (`lrgd.metrics.coverage_at_k`, `gini`). The reference row ranks each
# user's candidates in a random order: the coverage and Gini that the candidate sets alone allow.

# %%
pop = T["popularity"].rename_axis(None)
show(pop[["NDCG@10", "coverage@10", "Gini@10", "KL from zero-shot", "mean step_D"]], "popularity",
     f"popularity of the top-10 lists, {R.n_users} test users, catalogue of {prof.world.n_items} items")  # fmt: skip
optimised = pop.drop(index=["zero-shot", "random", "random ranking (reference)"])
checks.check("no optimised method covers less than 90% of zero-shot's catalogue coverage@10 (smallest ratio)",
             float((optimised["coverage@10"] / pop.loc["zero-shot", "coverage@10"]).min()), 0.9, at_least=True,
             fmt="{:.3f}", tfmt="{:g}")  # fmt: skip

# %% tags=["remove-input"]
z, worst = pop.loc["zero-shot"], optimised["Gini@10"].idxmax()
verdict = ("concentrates recommendations on fewer items than zero-shot: a popularity pull"
           if optimised.loc[worst, "Gini@10"] > z["Gini@10"] + 0.02 else
           "stays within 0.02 of zero-shot's Gini or below it: no popularity collapse on this testbed")  # fmt: skip
display(
    Markdown(
        f"Zero-shot covers {z['coverage@10']:.3f} of the catalogue with Gini {z['Gini@10']:.3f}; the optimised methods "
        f"cover {optimised['coverage@10'].min():.3f}–{optimised['coverage@10'].max():.3f} with Gini "
        f"{optimised['Gini@10'].min():.3f}–{optimised['Gini@10'].max():.3f}, and the most concentrated of them "
        f"(`{worst}`) {verdict}. The random ranking of the same candidates (coverage "
        f"{pop.loc['random ranking (reference)', 'coverage@10']:.3f}, Gini "
        f"{pop.loc['random ranking (reference)', 'Gini@10']:.3f}) marks how much of the concentration the candidate "
        "sets themselves carry."
    )
)

# %% [markdown]
# ## 4.5 Perturbations and the robust score
#
# In the dual view a demonstration is a training example of the implicit step $\Delta W_D$; perturbing it
# perturbs the dual model's training data. `lrgd.robust.perturb` (our reconstruction) offers item dropout,
# substitution by random or popular items, order shuffle, off-domain insertion and a flipped answer, each
# at a rate in $[0, 1]$. The **robust score** of a demonstration averages Effect_D over $R$ perturbed
# copies and penalises its spread,
#
# $$
# \text{robust}_D = \operatorname{mean}_r \text{Effect}_D^{(r)} - \lambda \operatorname{std}_r
# \text{Effect}_D^{(r)} - \mu\, \text{step}_D,
# $$ (eq-robust)
#
# where $\text{step}_D$ is the size of the demonstration's dual step on this decoder: its share of the attention
# mass, $Z_D/(Z_Z + Z_D)$ (the secant rate of chapter 3), averaged over layers, heads and the user's prompt
# positions (`lrgd.robust.testbed.dual_share`). Below, each method's chosen demonstrations are perturbed at test
# time and the decoder ranks again (the same draws for every method); then $\lambda$ and $\mu$ are swept.

# %%
pc = T["perturbation"]
shown = [m for m in pc["method"].unique() if m != "two-stage (no guards)"]  # the table above has it
fig, axes = plt.subplots(1, len(R.perturbations), figsize=(4.2 * len(R.perturbations), 3.6), sharey=True)
for ax, name in zip(np.atleast_1d(axes), R.perturbations):
    for method in shown:
        g = pc[(pc["perturbation"] == name) & (pc["method"] == method)]
        ax.plot(g["rate"], g["NDCG@10"], "-o", ms=3, label=method)
        ax.fill_between(g["rate"], g["lo"], g["hi"], alpha=0.08)
    ax.set(title=f"test-time {name}", xlabel="perturbation rate")
np.atleast_1d(axes)[0].set_ylabel("test NDCG@10 (95% CI)")
fig.legend(*np.atleast_1d(axes)[0].get_legend_handles_labels(), loc="lower center", ncol=len(shown), frameon=False,
           fontsize=8, bbox_to_anchor=(0.5, -0.06))  # fmt: skip
plt.show()

# %%
lt, mt = T["lambda"], T["mu"]
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
for cond, g in lt.groupby("demonstrations", sort=False):
    axes[0].errorbar(g["λ"], g["NDCG@10"], yerr=[g["NDCG@10"] - g["lo"], g["hi"] - g["NDCG@10"]], fmt="-o", ms=3,
                     capsize=2, label=cond)  # fmt: skip
axes[0].set(xlabel="λ (spread penalty, μ = 0)", ylabel="test NDCG@10", title="robust score: the λ trade-off")
for stage, g in mt.groupby("stage", sort=False):
    xm = np.arange(len(g))
    axes[1].errorbar(xm, g["ΔNDCG@10"], yerr=[g["ΔNDCG@10"] - g["Δ lo"], g["Δ hi"] - g["ΔNDCG@10"]], fmt="-o",
                     ms=3, capsize=2, label=stage)  # fmt: skip
    axes[2].plot(xm, g["mean step_D"], "-o", ms=3, label=stage)
axes[1].axhline(0, color="k", lw=0.8)
n_sweep = min(R.sweep_users, R.n_users)
axes[1].set(ylabel="test ΔNDCG@10 (95% CI)", title=f"the μ trade-off (stage 2: first {n_sweep} users)")
axes[2].set(ylabel="mean step_D (Z_D/Z) of the sets", title="the step penalty bites")
for ax in axes[1:]:
    ax.set(xticks=np.arange(len(R.mus)), xlabel=f"μ (step penalty, λ = {R.lam:g})")
    ax.set_xticklabels([f"{m:g}" for m in R.mus])
for ax in axes:
    ax.legend(frameon=False, fontsize=8)
fig.tight_layout()
plt.show()

# %% tags=["remove-input"]
drop = {}
for method in ("Effect_D top-k (stage 1)", f"robust Effect_D top-k (λ = {R.lam:g})"):
    g = pc[(pc["perturbation"] == R.robust_perturbation) & (pc["method"] == method)].set_index("rate")
    drop[method] = g["NDCG@10"].iloc[-1] - g["NDCG@10"].iloc[0]
r_vs_p = T["comparisons"].loc["robust − plain Effect_D"]
display(
    Markdown(
        f"Under `{R.robust_perturbation}` noise from rate {R.rates[0]:g} to {R.rates[-1]:g}, NDCG@10 moves by "
        + ", ".join(f"{v:+.3f} ({m})" for m, v in drop.items())
        + f". With clean demonstrations the robust choice differs from plain Effect_D by "
        f"{ci(r_vs_p['diff'], r_vs_p['lo'], r_vs_p['hi'])} (p {format_p(r_vs_p['p'])}). "
        "A robust score can only help where perturbations change which demonstrations are best; the figure shows "
        "whether they do for this decoder."
    )
)

# %% tags=["remove-input"]
m1 = mt[mt["stage"].str.startswith("stage 1")].set_index("μ")
m2 = mt[mt["stage"].str.startswith("stage 2")].set_index("μ")
lo_mu, hi_mu = m1.index[0], m1.index[-1]
mu_step = m1["mean step_D"].iloc[-1] - m1["mean step_D"].iloc[0]
gain_helps = m1["ΔNDCG@10"].iloc[1:].max() > m1["ΔNDCG@10"].iloc[0]
reading = (f"A moderate step penalty helps: the best μ is {m1['ΔNDCG@10'].idxmax():g}." if gain_helps else
           "Penalising the step buys no accuracy here: it trades gain for demonstrations the decoder attends to less.")  # fmt: skip
checks.check("sanity: the μ term bites — the chosen sets' mean step_D at the largest μ minus at μ = 0 (stage 1)",
             mu_step, 0.0, fmt="{:+.4f}", tfmt="{:g}")  # fmt: skip
display(
    Markdown(
        f"From μ = {lo_mu:g} to {hi_mu:g} the stage-1 sets' mean step_D moves from {m1['mean step_D'].iloc[0]:.3f} to "
        f"{m1['mean step_D'].iloc[-1]:.3f}, their test ΔNDCG@10 from {ci(*m1.iloc[0][['ΔNDCG@10', 'Δ lo', 'Δ hi']])} to "
        f"{ci(*m1.iloc[-1][['ΔNDCG@10', 'Δ lo', 'Δ hi']])} and their Gini@10 from {m1['Gini@10'].iloc[0]:.3f} to "
        f"{m1['Gini@10'].iloc[-1]:.3f}; with the penalty in stage 2 (first {min(R.sweep_users, R.n_users)} users) "
        f"ΔNDCG@10 moves from {m2['ΔNDCG@10'].iloc[0]:+.3f} to {m2['ΔNDCG@10'].iloc[-1]:+.3f}. {reading}"
    )
)

# %% [markdown]
# ## 4.6 Adapting over time
#
# With drift, a group's taste moves with calendar time, $u(t) = u + \text{drift}\cdot t\cdot a_g$. In each
# era a new pool of demonstrations and new users of the same groups arrive. The **static** sets are chosen
# once (two-stage, guarded) in era 0 and kept; the **adaptive** ones are chosen again in every era from
# that era's pool and validation items.


# %%
def drift_figure(dr: pd.DataFrame, R, title: str) -> pd.DataFrame:
    """Test NDCG@10 per era and method with 95% CIs (the drift table of `rt.drift_study`); returns the
    means, era × method. §4.9 draws the `full` run with it."""
    _, ax = plt.subplots(figsize=(5.5, 3.4))
    for method, g in dr.groupby("method", sort=False):
        ax.errorbar(g["era"], g["NDCG@10"], yerr=[g["NDCG@10"] - g["lo"], g["hi"] - g["NDCG@10"]], fmt="-o",
                    ms=3, capsize=2, label=method)  # fmt: skip
    ax.set(xlabel=f"era (t0 = era × {R.era_gap})", ylabel="test NDCG@10 (95% CI)", title=title,
           xticks=range(R.eras))  # fmt: skip
    ax.legend(frameon=False, fontsize=8)
    plt.show()
    return dr.pivot_table(index="era", columns="method", values="NDCG@10")


def drift_reading(piv: pd.DataFrame) -> str:
    """The adaptive − static gap in each era after the first, in words."""
    gap = (piv["adaptive (re-chosen each era)"] - piv["static (chosen in era 0)"]).iloc[1:].to_numpy()
    return (f"After era 0 the adaptive sets differ from the static ones by {', '.join(f'{g:+.3f}' for g in gap)} "
            f"NDCG@10 (eras 1–{len(piv) - 1}; the 95% intervals of each era are in the figure): a positive difference "
            "is what re-choosing from the current era's demonstrations buys once the groups' tastes have moved.")  # fmt: skip


piv = drift_figure(T["drift"], R, f"drift {R.drift:g}")
show(piv, "drift", "test NDCG@10 per era")

# %% tags=["remove-input"]
display(Markdown(drift_reading(piv)))

# %% [markdown]
# ## 4.6b Adapting over time on MovieLens-100k
#
# The claim (abstract): the two-stage optimisation keeps **adapting over time**. Section 4.6 tested it where
# the drift is built in; here the drift is whatever happened to MovieLens-100k's users between September 1997
# and April 1998, and the model is the reader of chapter 2b. MovieLens-100k is the only dataset of this book
# with timestamps: the Amazon sets list each user's items in order but carry no times (asking for them is a
# one-line `DataError`), so this study runs on MovieLens-100k only.
#
# **Design (our reconstruction**, `lrgd.robust.windows`). Calendar time is cut into $W$ windows of equal
# *count* — quantiles of the users' test-item times — because ratings come in bursts (most users rate
# everything within a day or two), so windows of equal span would leave some nearly empty. A user belongs to
# the window of their test item. In window $w$, validation users $U^{\text{val}}_w$ (their validation item
# falls in $w$; one half trains stage 2, the other is the held-out split of the collapse guard) and test
# users $U^{\text{test}}_w$ are different people: a test user never chooses demonstrations, in any window,
# and never supplies one. Candidate demonstrations $P_w$ are training transitions rated in window $w$; a
# demonstration becomes available in its window and stays available: $A_w = P_0 \cup \dots \cup P_w$.
#
# $$S^{\text{adaptive}}_0 = \text{stage 2}\big(\text{top-}k_{A_0}\,\text{gain};\,U^{\text{val}}_0\big),\qquad
# S^{\text{adaptive}}_w = \text{stage 2}\big(S^{\text{adaptive}}_{w-1};\,U^{\text{val}}_w,\,A_w\big),\qquad
# S^{\text{static}}_w = S^{\text{adaptive}}_0,$$
#
# where stage 2 is the guarded swap search of §4.4 on the runner's own prompts
# (`lrgd.robust.runner_objective.RunnerObjective`: the target's −log softmax over its candidates) and the
# stage-1 gain is $L_u(\varnothing) - L_u(\{d\})$. Against them: a **random** set of $k$ drawn from $A_w$
# in each window, and **zero-shot**. All four are scored on the same test users of each window.

# %%
win, _ = rwin.window_study(runner, R, reader, seed)  # (result, from the cache?)
wt = rwin.window_table(win, seed=seed)
print(f"{reader} on {R.drift_dataset}: {R.drift_windows} windows, k = {R.drift_k}, {R.drift_pool} new "
      f"demonstrations per window, {R.drift_valid_users} validation and up to {R.drift_test_users} test "
      "users per window")  # fmt: skip
cell = lambda m, g: ci(g[m].iloc[0], g[f"{m} lo"].iloc[0], g[f"{m} hi"].iloc[0], "{:.3f}")  # noqa: E731
tab = pd.DataFrame([
    {"window": w, "dates": g["dates"].iloc[0], "test users": g["test users"].iloc[0], "method": m,
     **{met: cell(met, g[g["method"] == m]) for met in rwin.METRICS}}
    for w, g in wt.groupby("window") for m in rwin.METHODS
]).set_index(["window", "dates", "test users", "method"])  # fmt: skip
show(
    tab, "windows", f"test NDCG@10 and HR@10 per calendar window, mean [95% CI]; {reader}, {R.drift_dataset}"
)


# %%
def paired_windows(win: dict, a: str = "adaptive", b: str = "static") -> pd.DataFrame:
    """``a − b`` per window (`rwin.paired_table`) with the sign-flip p-values Holm-adjusted over the windows:
    one window of eight passing p < 0.05 on its own is what chance gives."""
    pt = rwin.paired_table(win, a, b, seed=seed).set_index("window")
    return pt.assign(**{"p (Holm)": holm(pt["p"].to_numpy())})


pt = paired_windows(win)
cost = rwin.cost_table(win).set_index("window")
show(pt.join(cost[["available", "stage-1 passes", "adaptive passes", "static passes", "stopped by"]]),
     "windows-paired", "adaptive − static on the same test users (ΔNDCG@10, 95% CI, sign-flip p) and the "
     "cost in reader passes (validation prompts scored) per window; p: sign-flip permutation, Holm over the "
     "windows", formats={"p": format_p, "p (Holm)": format_p})  # fmt: skip
first = win["windows"][0]["sets"]["adaptive"]
checks.check("sanity: the static set is window 0's set in every window (windows where it is not)",
             sum(w["sets"]["static"] != first for w in win["windows"]), 0, kind="identity", fmt="{:.0f}",
             tfmt="{:g}")  # fmt: skip
test_users = [u for w in win["windows"] for u in w["test_users"]]
checks.check("sanity: no test user supplies a demonstration or is counted twice (overlaps)",
             len({u for u, _ in win["sources"]} & set(test_users)) + len(test_users) - len(set(test_users)),
             0, kind="identity", fmt="{:.0f}", tfmt="{:g}")  # fmt: skip

# %%
fig, ax = plt.subplots(figsize=(6, 3.6))
for j, (m, g) in enumerate(wt.groupby("method", sort=False)):
    x = g["window"] + 0.06 * (j - 1.5)  # a small offset per method, so the bands stay readable
    ax.plot(x, g["NDCG@10"], "-o", ms=3, label=m)
    ax.fill_between(x, g["NDCG@10 lo"], g["NDCG@10 hi"], alpha=0.1)
ax.set(xlabel="calendar window (equal counts of test users)", ylabel="test NDCG@10 (95% CI)",
       title=f"{reader}, {R.drift_dataset}: adapting over time", xticks=range(R.drift_windows))  # fmt: skip
ax.legend(frameon=False, fontsize=8)
plt.show()


# %% tags=["remove-input"]
def windows_reading(win: dict) -> str:
    """The reading of a window study (§4.6b; §4.9 reads the `full` one): adaptive against static in the
    windows after the first (Holm-adjusted over the windows), the cost in reader passes, and zero-shot."""
    pt, cost = paired_windows(win), rwin.cost_table(win).set_index("window")
    later = pt.iloc[1:]
    sig = later["p (Holm)"] < 0.05
    wins_, loses = int((sig & (later["ΔNDCG@10"] > 0)).sum()), int((sig & (later["ΔNDCG@10"] < 0)).sum())
    spent = cost["adaptive passes"].sum() / cost["static passes"].sum()
    vs0 = paired_windows(win, "adaptive", "zero-shot")
    helps = int(((vs0["p (Holm)"] < 0.05) & (vs0["ΔNDCG@10"] > 0)).sum())
    verdict = ("re-optimising each window helped" if wins_ > loses and not loses
               else "re-optimising each window hurt" if loses > wins_ and not wins_
               else "re-optimising each window made no reliable difference" if not wins_ and not loses
               else "re-optimising each window helped in some windows and hurt in others")  # fmt: skip
    return (f"In windows 1–{len(pt) - 1} the adaptive set beats the static one in {wins_} and loses to it in "
            f"{loses} (Holm-adjusted p < 0.05 over the windows; mean ΔNDCG@10 {later['ΔNDCG@10'].mean():+.3f}; "
            f"windows with an unadjusted 95% interval above zero: {int((later['lo'] > 0).sum())}), at "
            f"{spent:.1f}× the static set's reader passes: on MovieLens-100k, for the reader, {verdict}. The "
            f"adaptive set beats zero-shot in {helps} of {len(vs0)} windows (Holm-adjusted).")  # fmt: skip


display(Markdown(windows_reading(win)))

# %% [markdown]
# ## 4.7 Perturbed demonstrations on real data: the reader
#
# The runner's `perturbed` selector (`lrgd.robust.selectors`) applies the same perturbations to another
# selector's demonstrations on a real catalogue, for every model the runner knows. The reader of chapter
# 2b, reading `recent` transitions, and the vote over the same demonstrations:

# %%
rg = rp.reader_curve(runner, R, reader, seed, prof.eval.n_boot)
show(rg.pivot_table(index="rate", columns="perturbation", values="gain over k = 0").rename(index="{:g}".format), "reader",
     f"{reader} on {R.reader_dataset}: in-context gain (ΔNDCG@10 over k = 0) of {R.reader_k} recent "
     f"demonstrations perturbed at each rate ({rg.attrs['n_users']} users)")  # fmt: skip


def perturbation_figure(rg: pd.DataFrame, title: str) -> None:
    """The reader's gain over k = 0 against the perturbation rate, one line per perturbation (95% bands)."""
    _, ax = plt.subplots(figsize=(5.5, 3.4))
    for name, g in rg.groupby("perturbation", sort=False):
        ax.plot(g["rate"], g["gain over k = 0"], "-o", ms=3, label=name)
        ax.fill_between(g["rate"], g["lo"], g["hi"], alpha=0.12)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(xlabel="perturbation rate", ylabel="ΔNDCG@10 over k = 0 (95% CI)", title=title)
    ax.legend(frameon=False)
    plt.show()


perturbation_figure(rg, f"{reader}, {R.reader_dataset}")

# %% tags=["remove-input"]
display(Markdown(rp.reader_reading(rg, R.perturbations)))

# %% [markdown]
# ### The LLM: does it read its demonstrations?
#
# Chapter 2 measured that demonstrations do not raise SmolLM2's accuracy, so no choice of demonstrations
# — robust or optimised — can be expected to help it. A sharper question is whether it reads them at
# all: chapter 2's demonstration row (the same users, candidates and selector) against the same
# demonstrations with every answer replaced by a uniform other item (`flip_next` at rate 1) — and, where
# the profile asks, with every item replaced. A model whose ranking depends on its demonstrations must
# move when their answers change; an unmoved ranking says the demonstrations' content is not used.

# %% tags=["hide-input"]
chk = rp.llm_check(runner, prof, seed, prof.eval.n_boot)


def llm_check_table(chk: dict, uuid: str, caption: str) -> None:
    """The LLM check as a table: NDCG@10 with its CI, the paired difference from the clean row, p and Holm p."""
    t = chk["table"]
    cells = pd.DataFrame({
        "NDCG@10": [ci(r["NDCG@10"], r["lo"], r["hi"], "{:.3f}") for _, r in t.iterrows()],
        "Δ vs clean": ["—" if pd.isna(r["Δ vs clean"]) else ci(r["Δ vs clean"], r["Δ lo"], r["Δ hi"])
                       for _, r in t.iterrows()],
        "p": ["—" if pd.isna(r["p"]) else format_p(r["p"]) for _, r in t.iterrows()],
        "p (Holm)": ["—" if pd.isna(r["p (Holm)"]) else format_p(r["p (Holm)"]) for _, r in t.iterrows()],
    }, index=t.index)  # fmt: skip
    show(cells, uuid, caption)


llm_check_table(chk, "llm-check", f"{chk['model']} on {chk['dataset']}, k = {chk['k']}, {chk['n_users']} test "
                f"users, score variant {chk['variant']} (chosen on validation users in chapter 2); mean [95% CI]; "
                "Δ paired with the clean row; p: sign-flip permutation, Holm over the rows")  # fmt: skip

# %% tags=["remove-input"]
display(Markdown(f"**Reading.** {rp.llm_reading(chk)}"))

# %% [markdown]
# ## 4.8 The optimiser on real data: the reader
#
# The claim (abstract): a **two-stage optimisation** improves the demonstrations and **prevents
# performance collapse**. Sections 4.4–4.6 tested it on testbed B; here the same optimiser
# (`lrgd.robust.optimise`) chooses one **global** set of k demonstrations — shown to every user — for the
# reader of chapter 2b on real data, through the runner's own prompts (`lrgd.robust.runner_objective`),
# and the set is written to a file that any model's evaluation reads
# (`python -m lrgd optimize …`, then `python -m lrgd evaluate --method optimized --demos FILE`).
#
# What is optimised (**our reconstruction**). For user u with history h_u, validation item y_u and
# candidates C_u, and an ordered set S of demonstrations (training windows of other users),
#
# $$L_u(S) = -\log \frac{\exp s_\theta(y_u \mid S, h_u)}{\sum_{c \in C_u} \exp s_\theta(c \mid S, h_u)},$$
#
# the reader's own ranking loss. A demonstration the leakage guard refuses for u is dropped from u's
# prompt. The validation users are split into U_tr (train-validation) and U_ho (held-out validation); the
# test users are never among them and never supply a demonstration.
#
# * **Stage 1**: the single-demonstration gain $g(d) = \frac{1}{|U_{tr}|}\sum_{u \in U_{tr}} L_u(\varnothing) - L_u(\{d\})$
#   for every pool demonstration d (M·|U_tr| + |U_tr| prompts); S_0 = the k largest.
# * **Stage 2**: swap local search on $J(S) = \frac{1}{|U_{tr}|}\sum_{u \in U_{tr}} L_u(S)$: each iteration
#   scores a seeded sample of swaps and takes the best. **Collapse guard**: $H(S_t)$, the same loss on
#   U_ho, is tracked; the search stops after `opt_patience` iterations without a new best and returns
#   $\arg\min_t H(S_t)$. Without the guard it runs all iterations and returns the last set.

# %%
raw, _ = real.optimiser_run(runner, prof, seed)  # (result, from the cache?)
opt_table = real.optimiser_table(raw, prof.eval.n_boot, seed)
sp, cost = raw["spec"], raw["cost"]


def cells(r: pd.Series, m: str) -> dict:
    """One metric of one method as 'mean [CI]', its paired Δ over zero-shot and the Holm p."""
    d = "—" if pd.isna(r[f"Δ{m}"]) else ci(r[f"Δ{m}"], r[f"Δ{m} lo"], r[f"Δ{m} hi"])
    p = "—" if pd.isna(r[f"p Holm ({m})"]) else format_p(r[f"p Holm ({m})"])
    return {m: ci(r[m], r[f"{m} lo"], r[f"{m} hi"], "{:.3f}"), f"Δ{m} over zero-shot": d, f"p Holm ({m})": p}


compact = pd.DataFrame({name: cells(r, "NDCG@10") | cells(r, "HR@10") for name, r in opt_table.iterrows()}).T
show(compact, "real-opt",
     f"{sp['model']} on {sp['dataset']}: {len(raw['test_users'])} test users, k = {sp['k']}, pool of "
     f"{sp['n_pool']}, {sp['n_valid_users']} validation users (half held out); mean [95% CI]; Δ paired with "
     "zero-shot; p: sign-flip permutation, Holm over the methods")  # fmt: skip
print(f"prompts scored: stage 1 {cost['stage1_passes']}, both stages (guarded) {cost['passes_guarded']}, "
      f"with the unguarded run {cost['passes_both']}; the optimiser took {cost['optimise_seconds']:.1f} s when "
      "computed (then cached)")  # fmt: skip
llm = "smollm2-135m"  # its time per prompt: chapter 2's random k = 2 run on this dataset (cached there)
llm_run = runner.run(EvalConfig(sp["dataset"], "random", prof.eval.table_k, n_users=prof.eval.n_users, model=llm,
                                seed=seed))  # fmt: skip
s_llm = llm_run["provenance"]["seconds_per_user"]
print(f"the same search on {llm}: {cost['passes_guarded']} prompts × {s_llm:.1f} s per prompt (measured in chapter 2 "
      f"with k = {prof.eval.table_k}; k = {sp['k']} prompts are longer) ≈ {cost['passes_guarded'] * s_llm / 3600:.1f} "
      "hours on this machine: not run here")  # fmt: skip
chosen_by = set(raw["valid_users"]) | {src for src, _ in raw["sources"]}
checks.check("§4.8 test users never chose anything: not validation users, not demonstration sources (count)",
             len(set(raw["test_users"]) & chosen_by), 0, kind="identity", fmt="{:.0f}", tfmt="{:g}")  # fmt: skip

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
lines = (("train", "-o", "C0", "train-validation (optimised)"), ("holdout", "-s", "C1", "held-out validation (guard)"),
         ("test", "--^", "grey", "test (figure only, never used)"))  # fmt: skip
for ax, (name, cv) in zip(axes, raw["curves"].items()):
    it = np.arange(len(cv["train"]))
    for key, style, color, label in lines:
        ax.plot(it, cv[key], style, ms=4, color=color, label=label)
        ax.axhline(raw["zero_shot_loss"][key], color=color, lw=0.8, ls=":")  # the same users, k = 0
    ax.axvline(cv["best_iter"], color="k", lw=0.8)
    ax.set(title=f"{name} (returned: iteration {cv['best_iter']})", xlabel="stage-2 iteration (0: stage 1)")
axes[0].set_ylabel("mean rank loss L_u (dotted: zero-shot)")
fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, frameon=False, fontsize=8)
fig.tight_layout(rect=(0, 0.08, 1, 1))
plt.show()

# %% [markdown]
# Popularity collapse: a set shown to every user may pull every user toward the same items. Catalogue
# coverage@10 is the share of the dataset's titled items that enter some test user's top 10 (of their
# candidates); the Gini index measures how unequally those top-10 slots are shared among items (0: evenly).

# %%
show(opt_table[["coverage@10", "Gini@10"]], "real-pop",
     f"top-10 recommendations of the {len(raw['test_users'])} test users, per method")  # fmt: skip


# %% tags=["remove-input"]
def optimiser_reading(raw: dict, table: pd.DataFrame) -> str:
    """The reading of an optimiser run on real data (§4.8; §4.9 reads the `full` one): the guarded set
    against zero-shot and per-user recent, what the unguarded search did to each loss, and coverage."""
    two, zs = table.loc["two-stage"], table.loc["zero-shot"]
    rec = table.filter(like="recent", axis=0).iloc[0]
    g, z = raw["curves"]["two-stage, no guard"], raw["zero_shot_loss"]["test"]
    helps = ("raises" if two["ΔNDCG@10 lo"] > 0 else "lowers" if two["ΔNDCG@10 hi"] < 0
             else "does not measurably change")  # fmt: skip
    transfer = (f"while the held-out loss moved by {g['holdout'][-1] - g['holdout'][0]:+.3f} and the test loss by "
                f"{g['test'][-1] - g['test'][0]:+.3f}, ending {'above' if g['test'][-1] > z else 'below'} the "
                f"zero-shot prompts' test loss ({z:.3f})")  # fmt: skip
    return (f"On {raw['spec']['dataset']}, the guarded two-stage set {helps} the reader's test NDCG@10 over "
            f"zero-shot (Δ {ci(two['ΔNDCG@10'], two['ΔNDCG@10 lo'], two['ΔNDCG@10 hi'])}; per-user recent: "
            f"{ci(rec['ΔNDCG@10'], rec['ΔNDCG@10 lo'], rec['ΔNDCG@10 hi'])}); without the guard, stage 2 "
            f"({len(g['train']) - 1} iteration(s), stopped by: {g['stopped_by'].replace('_', ' ')}) lowered "
            f"the train-validation loss by {g['train'][0] - g['train'][-1]:.3f} {transfer}; coverage@10 went from "
            f"{zs['coverage@10']:.3f} (zero-shot) to {two['coverage@10']:.3f}.")  # fmt: skip


display(Markdown(optimiser_reading(raw, opt_table)))

# %% [markdown]
# ## 4.9 The testbed study at the `full` profile
#
# The sections above ran at this page's profile. The testbed study (§4.1–4.6), the perturbed
# demonstrations on real data (§4.7) and the optimiser on real data (§4.6b, §4.8) are also committed at
# the `full` profile — more test users, a larger pool, more
# perturbed copies and longer searches, on chapter 1b's decoder and chapter 2b's reader trained at
# `full` — and their main tables are shown here, read from `results/full/robust/` only when they were
# computed under the current code, configuration, data and weights (the weights are committed in
# `results/full/models/`). Nothing is computed here; a part not committed says so.

# %% tags=["hide-input"]
full = get_profile("full")
full_weights = results_dir("full") / "models" / td.weights_path(rw.RecWorld.generate(full.world, seed),
                                                                 full.decoder, seed).name  # fmt: skip
FT = rt.stored_tables(file_hash(full_weights, 16), full, seed) if full_weights.is_file() else {}
n_tables = len(rt.table_names(full, seed))  # an unfinished (resumable) run shows the tables it has stored
if profile == "full":
    display(Markdown("This page is the `full` run: the tables above are its tables."))
elif "methods" not in FT:
    display(Markdown("No `full` run of the testbed tables is committed for the current code and "
                     "configuration; `python scripts/full_robust.py --part testbed` computes it (hours on one core; "
                     "resumable, table by table)."))  # fmt: skip
    FT = {}
else:
    F = full.robust
    if len(FT) < n_tables:
        display(Markdown(f"The `full` run is unfinished: {len(FT)} of its {n_tables} tables are committed "
                         "(`python scripts/full_robust.py --part testbed` resumes it). Its main tables:"))  # fmt: skip
    show(FT["methods"].rename_axis(None), "full-methods", f"full profile: test NDCG@10, {F.n_users} users, "
         f"k = {F.k}, pool of {F.n_pool}; Δ paired with zero-shot; p: sign-flip permutation, Holm over the table",
         formats={"p": format_p, "p (Holm)": format_p})  # fmt: skip
    if "comparisons" in FT:
        show(FT["comparisons"].rename_axis(None), "full-comparisons", f"full profile: paired differences in "
             f"test NDCG@10, {F.n_users} users (95% CI, sign-flip p)", formats={"p": format_p})  # fmt: skip
    if "popularity" in FT:
        show(FT["popularity"].rename_axis(None)[["NDCG@10", "coverage@10", "Gini@10", "KL from zero-shot"]],
             "full-popularity", f"full profile: popularity of the top-10 lists, {F.n_users} test users")  # fmt: skip

# %% tags=["remove-input"]
if "methods" in FT and profile != "full":
    fm = FT["methods"]
    two_f, free_f = fm.loc["two-stage (guarded)"], fm.loc["two-stage (no guards)"]
    sig = lambda r: ("beats zero-shot" if r["Δ lo"] > 0 else "falls below zero-shot" if r["Δ hi"] < 0  # noqa: E731
                     else "does not differ reliably from zero-shot")  # fmt: skip
    text = (f"**Reading (full).** With {full.robust.n_users} test users, the guarded two-stage optimiser "
            f"{sig(two_f)} (Δ NDCG@10 {ci(two_f['Δ vs zero-shot'], two_f['Δ lo'], two_f['Δ hi'])}); without its "
            f"guards it {sig(free_f)} ({ci(free_f['Δ vs zero-shot'], free_f['Δ lo'], free_f['Δ hi'])}).")  # fmt: skip
    if "comparisons" in FT:
        fc = FT["comparisons"]
        diff = lambda r: "higher" if r["lo"] > 0 else "lower" if r["hi"] < 0 else "not reliably different"  # noqa: E731
        g1, gu = fc.loc["guarded − stage 1"], fc.loc["guarded − unguarded"]
        text += (f" Against stage 1 alone its test NDCG@10 is {diff(g1)} ({ci(g1['diff'], g1['lo'], g1['hi'])}), "
                 f"and against the unguarded search {diff(gu)} ({ci(gu['diff'], gu['lo'], gu['hi'])}).")  # fmt: skip
    if "popularity" in FT:
        fp = FT["popularity"]
        text += (f" Catalogue coverage@10 of the guarded sets is {fp.loc['two-stage (guarded)', 'coverage@10']:.3f} "
                 f"against {fp.loc['zero-shot', 'coverage@10']:.3f} for zero-shot.")  # fmt: skip
    display(Markdown(text))

# %% tags=["hide-input"]
if "drift" in FT and profile != "full":
    fpiv = drift_figure(FT["drift"], full.robust, f"full profile, §4.6: drift {full.robust.drift:g}")
    display(Markdown(f"**Reading (full, §4.6).** {drift_reading(fpiv)}"))

# %% tags=["hide-input"]
if profile != "full":
    full_runner = Runner("full", dev, quiet=True, dtype=dtype)
    full_reader = full.reader.models[0]
    fwin, _ = rwin.window_study(full_runner, full.robust, full_reader, seed, compute=False)
    fraw, _ = real.optimiser_run(full_runner, full, seed, compute=False)
    if fwin is None:
        display(Markdown(f"§4.6b at `full` ({full_reader}, {full.robust.drift_windows} windows): not committed "
                         "for the current code, data and weights."))  # fmt: skip
    else:
        fpt = paired_windows(fwin)
        show(fpt, "full-windows", f"full profile, §4.6b: adaptive − static per calendar window on the same test "
             f"users (ΔNDCG@10, 95% CI, sign-flip p, Holm over the windows); {full_reader}, "
             f"{full.robust.drift_dataset}", formats={"p": format_p, "p (Holm)": format_p})  # fmt: skip
    if fraw is None:
        try:  # a run that cannot start says why (e.g. the profile asks for more users than the dataset has)
            split_users(full_runner, real.spec_for(full, seed))
            why = "not committed for the current code, data and weights"
        except LRGDError as e:
            why = (f"the `full` profile's sizes cannot run (it asks for `robust.opt_test_users` = "
                   f"{full.robust.opt_test_users} test and `opt_valid_users` = {full.robust.opt_valid_users} "
                   f"validation users): {e}")  # fmt: skip
        display(Markdown(f"§4.8 at `full` ({full_reader}, {full.robust.reader_dataset}): {why}."))
    else:
        fot = real.optimiser_table(fraw, full.eval.n_boot, seed)
        fsp = fraw["spec"]
        show(pd.DataFrame({n: cells(r, "NDCG@10") for n, r in fot.iterrows()}).T, "full-real-opt",
             f"full profile, §4.8: {fsp['model']} on {fsp['dataset']}, {len(fraw['test_users'])} test users, "
             f"k = {fsp['k']}, pool of {fsp['n_pool']}, {fsp['n_valid_users']} validation users; mean [95% CI]; "
             "Δ paired with zero-shot; Holm over the methods")  # fmt: skip

# %% tags=["hide-input"]
if profile != "full":
    frg = rp.reader_curve(full_runner, full.robust, full_reader, seed, full.eval.n_boot, compute=False)
    fchk = rp.llm_check(full_runner, full, seed, full.eval.n_boot, compute=False)
    if frg is None:
        display(Markdown(f"§4.7 at `full` ({full_reader}, {full.robust.reader_dataset}): not committed for the "
                         "current code, data and weights (`python scripts/full_robust.py --part perturbed`)."))  # fmt: skip
    else:
        perturbation_figure(frg, f"full profile, §4.7: {full_reader}, {full.robust.reader_dataset}, "
                                 f"{frg.attrs['n_users']} users")  # fmt: skip
        display(Markdown(f"**Reading (full, §4.7).** {rp.reader_reading(frg, full.robust.perturbations)}"))
    if fchk is None:
        display(Markdown(f"§4.7's LLM check at `full` ({full.grid.models[0]}, {full.robust.reader_llm_dataset}): "
                         "not committed for the current code, data and weights."))  # fmt: skip
    else:
        llm_check_table(fchk, "full-llm-check", f"full profile, §4.7: {fchk['model']} on {fchk['dataset']}, "
                        f"k = {fchk['k']}, {fchk['n_users']} test users, score variant {fchk['variant']}; mean "
                        "[95% CI]; Δ paired with the clean row; Holm over the rows")  # fmt: skip
        display(Markdown(f"**Reading (full, §4.7).** {rp.llm_reading(fchk)}"))

# %% tags=["remove-input"]
if profile != "full" and fwin is not None:
    display(Markdown(f"**Reading (full, §4.6b).** {windows_reading(fwin)}"))
if profile != "full" and fraw is not None:
    display(Markdown(f"**Reading (full, §4.8).** {optimiser_reading(fraw, fot)}"))

# %% [markdown]
# ## Summary of this chapter's checks

# %%
display(checks.table())
checks.assert_all()
rows_of = lambda df: json.loads(df.round(5).reset_index().to_json(orient="records"))  # noqa: E731
out = {
    "checks": checks.as_dict(),
    "information": rows_of(info),
    "observer": rows_of(obs),
    "methods": rows_of(table),
    "perturbation": rows_of(pc),
    "lambda": rows_of(lt),
    "mu": rows_of(mt),
    "trust": rows_of(tr),
    "popularity": rows_of(pop),
    "drift": rows_of(T["drift"]),
    "reader_perturbation": rows_of(rg),
    "llm_check": {
        **{k: chk[k] for k in ("model", "dataset", "k", "n_users", "variant")},
        "rows": rows_of(chk["table"].rename_axis("condition")),
    },
    "windows": rows_of(wt),
    "optimiser_real": rows_of(opt_table),
    "provenance": prov.finish().as_dict(),
}
path = write_json(results_dir(profile) / "04_robust.json", out)
print("results written to", path.relative_to(path.parents[2]))

# %% tags=["remove-input", "nbval-ignore-output"]
prov.finish()

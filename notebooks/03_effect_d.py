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
# # 3. Effect_D: scoring demonstrations through the dual model
#
# **The paper's claim** (arXiv 2504.04386 {cite}`lrgd2025`, in our words from its abstract): a
# demonstration's quality can be measured by **Effect_D**, how much it speeds up the dual model's
# convergence toward the user's true preference. The paper's formula is not available to us; what follows
# is **our reconstruction** from chapter 1's per-layer dual, tested where the truth is known (testbed B of
# chapter 1b) and on a real LLM with Amazon data.
#
# ## 3.1 Definition
#
# Chapter 1 showed that inserting a demonstration $D$ changes every head's attention output at every later
# position $p$ by the dual model's step, with $Z$ the user's own context,
#
# $$
# \begin{aligned}
# \Delta o_{D}^{(\ell,h)}(p) &= \eta\,\big(\mathrm{Attn}_D(q_p) - \mathrm{Attn}_Z(q_p)\big),\\
# \eta &= \frac{Z_D}{Z_Z + Z_D}\ \ (\text{secant})\quad\text{or}\quad \eta = \frac{Z_D}{Z_Z}\ \ (\text{derivative}),
# \end{aligned}
# $$ (eq-step)
#
# holding that layer's inputs fixed. Let $L_u$ be the user's loss, the negative log-likelihood of the true
# next item's title after the zero-shot prompt. Because $\partial L_u/\partial o^{(\ell,h)}_p$ is the *total*
# derivative — it carries a change at layer $\ell$ through every later layer — the first-order change of
# $L_u$ is a sum of inner products, and we define
#
# $$
# \mathrm{Effect}_D(D, u) = -\sum_{\ell}\sum_{h}\sum_{p}\Big\langle \Delta o_D^{(\ell,h)}(p),\;
#   \frac{\partial L_u}{\partial o^{(\ell,h)}_p}\Big\rangle .
# $$ (eq-effect)
#
# With the derivative rate, {eq}`eq-effect` is *exactly* $-\,dL_u/d\alpha$ at $\alpha = 0$ when every later
# token's attention weights on $D$ are scaled by $\alpha$: the speed at which the demonstration starts to
# pull the model toward the user's item. The secant rate is the size the step actually has when $D$ is
# inserted. Everything $D$ needs (its keys and values at its slot, RoPE-positioned) comes from one forward
# pass of the instruction and $D$; everything $u$ needs (queries, partition sums, outputs, gradients) from
# one forward and one backward pass of $u$'s zero-shot prompt. $M$ demonstrations × $N$ users cost
# $M + 2N$ passes, against $N + MN$ for the **true gain** $L_u(\text{zero-shot}) - L_u(\text{with } D)$.

# %% tags=["parameters"]
profile = "ci"  # ci | full | gpu
device = "auto"  # auto | cpu | cuda
dtype = "auto"  # the real LLM's dtype (§3.4–3.5): auto (bfloat16 on cuda, float32 elsewhere) | float32
model = "smollm2-135m"  # the real LLM of §3.4: smollm2-135m | gemma3-270m | /path/to/hf-model
dataset = "amazon-games"  # the real data of §3.4
seed = 0
n_demos = None  # §3.4 real-LLM demonstrations M (None: the profile's effect.n_demos)
n_users = None  # §3.4 real-LLM users N (None: the profile's effect.n_users)
n_select_users = None  # §3.5 held-out test users (None: the profile's eval.n_users, as chapter 2)
effect_pool = None  # §3.5 demonstrations ranked by Effect_D (None: the profile's effect.select_pool)

# %% tags=["hide-input"]
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from lrgd.checks import Checks
from lrgd.config import get_profile, resolve_device, resolve_dtype, results_dir
from lrgd.demos import effect as fx
from lrgd.demos import effect_report as er
from lrgd.demos import effect_study as es
from lrgd.demos import testbed_effect as tbe
from lrgd.metrics import format_p, spearman
from lrgd.provenance import Provenance
from lrgd.results import write_json
from lrgd.testbeds import recworld as rw
from lrgd.testbeds import tiny_decoder as td

cfg = get_profile(profile)
dev = resolve_device(device)
n_demos = n_demos or cfg.effect.n_demos
n_users = n_users or cfg.effect.n_users
prov = Provenance(profile=cfg.name, device=dev, seed=seed, dataset=f"recworld + {dataset}")
torch.manual_seed(seed)
llm_threads = min(2, torch.get_num_threads())  # the LLM sections (§3.4–3.5) use two
torch.set_num_threads(llm_threads)
plt.rcParams.update({"figure.dpi": 110, "figure.figsize": (6.4, 3.6)})
checks = Checks()
print(f"profile={cfg.name} device={dev} dtype={resolve_dtype(dtype, dev)} model={model} dataset={dataset} "
      f"seed={seed} M={n_demos} N={n_users}")  # fmt: skip

# %% [markdown]
# ## 3.2 Check: the first-order formula is the exact derivative
#
# On a small random Llama in float64, compare $\mathrm{Effect}_D$ (derivative rate) with a finite
# difference of $L_u(\alpha)$ (Richardson-extrapolated, because RMSNorm computes in float32 even in a
# float64 model), for a few random (demonstration, user) pairs. This holds by calculus whenever the code
# is right: a check of the code, not evidence for the paper's claim (that comes in §3.3–3.4).

# %%
from lrgd.llm import random_llama

toy = random_llama(n_layers=3, seed=seed)
g = torch.Generator().manual_seed(seed)
rows = []
for _ in range(4):
    rand = lambda n: torch.randint(0, 97, (n,), generator=g)  # noqa: E731
    sp, demo = fx.SlotPrompt(rand(6), rand(12), rand(3), slot=10), rand(8)
    l0 = fx.loss_with_demo(toy, sp, None)
    slope = lambda e: -(fx.loss_with_demo(toy, sp, demo, alpha=e) - l0) / e  # noqa: E731, B023
    est = fx.effect_d(fx.demo_state(toy, sp, demo), fx.user_state(toy, sp), rate="derivative")
    rows.append({"finite difference": 2 * slope(0.01) - slope(0.02), "Effect_D (derivative)": est})
fd = pd.DataFrame(rows)
fd["relative gap"] = (fd.iloc[:, 1] - fd.iloc[:, 0]).abs() / fd.iloc[:, 0].abs()
display(fd.round(5))
checks.check(
    "Effect_D (derivative) vs finite differences, max relative gap", fd["relative gap"].max(), 2e-3,
    kind="identity", fmt="{:.3g}", tfmt="{:g}",
)  # fmt: skip

# %% [markdown]
# ## 3.3 Testbed B: where each demonstration's true usefulness is known
#
# Chapter 1b's recommendation world and its trained tiny RoPE decoder (cached weights). A shared pool of
# demonstrations — real users of random taste groups plus some random-item sequences — is scored for
# many query users. For every (demonstration, user) pair we have the **true usefulness** (nats of
# information about the user's group, from the world's Bayes posterior), the **true gain** (the
# decoder's loss drop when the demonstration is inserted) and **Effect_D**
# (`lrgd.demos.testbed_effect.testbed_pairs`).

# %% tags=["nbval-ignore-output"]
torch.set_num_threads(1)  # the tiny decoder is fastest (and deterministic) on one thread
world = rw.RecWorld.generate(cfg.world, seed)
net = td.load_or_train(world, cfg.decoder, seed=seed, device="cpu").model  # cached by chapter 1b

# %%
tb = tbe.testbed_pairs(net, world, cfg.effect.testbed_queries, cfg.effect.testbed_pool, seed)
print(f"{tb.effect.shape[0]} demonstrations × {tb.effect.shape[1]} users = {tb.effect.size} pairs")

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
for k, name in enumerate(rw.KINDS):
    sel = tb.kind == k
    ax[0].scatter(tb.effect[sel], tb.gain[sel], s=3, alpha=0.4, label=name)
    ax[1].scatter(tb.usefulness[sel], tb.effect[sel], s=3, alpha=0.4, label=name)
lim = [min(tb.effect.min(), tb.gain.min()), max(tb.effect.max(), tb.gain.max())]
ax[0].plot(lim, lim, "k:", lw=0.8, label="y = x")
ax[0].set(xlabel="Effect_D (secant)", ylabel="true gain (nats)", title="Effect_D vs the decoder's true gain")
ax[1].set(xlabel="true usefulness (nats)", ylabel="Effect_D", title="Effect_D vs ground truth")
for a in ax:
    a.legend(fontsize=7, markerscale=3)
fig.tight_layout()
plt.show()
corr_tb = er.correlation_table(
    {
        "Effect_D vs true gain": (tb.effect, tb.gain),
        "Effect_D vs usefulness": (tb.effect, tb.usefulness),
        "true gain vs usefulness": (tb.gain, tb.usefulness),
    },
    seed=seed,
)
display(corr_tb.round(3))
checks.check("testbed B: Spearman(Effect_D, true gain), lower CI", corr_tb.iloc[0, 1], 0.5, at_least=True,
             fmt="{:.3g}", tfmt="{:g}")  # fmt: skip

# %% tags=["remove-input"]
display(Markdown(er.testbed_correlation_reading(corr_tb)))

# %% [markdown]
# The first three columns pool all pairs; the within-user columns correlate over the demonstrations of one
# user at a time and average over users, which is what choosing demonstrations *for* a user needs.
#
# **Selection.** Each user picks $k = 2$ demonstrations from the pool. Per-user Effect_D may not look at
# the held-out item, so it is computed on a *validation* step (the history's last item as the target);
# the global score averages Effect_D over separate validation users. We compare with random picks, with
# the oracle (true usefulness, which needs the user's hidden group) and with zero-shot, all scored by the
# decoder on the held-out item, and show the Bayes observer's NDCG for the same prompts.

# %%
choices, val_self = tbe.selection_choices(net, world, tb, k=2, seed=seed)
sel_tb = tbe.selection_table(net, world, tb, choices, seed=seed)
display(sel_tb.round(3))
checks.check(
    "testbed B: selection by Effect_D on the held-out item beats random (paired Δ NDCG@10, lower CI)",
    sel_tb.loc["Effect_D on the held-out item (peeks)", "Δ CI low"], 0.0, at_least=True,
    fmt="{:.3g}", tfmt="{:g}",
)  # fmt: skip
print(f"Spearman(validation-step Effect_D, usefulness): {spearman(val_self, tb.usefulness):.2f}")

# %% tags=["remove-input"]
display(Markdown(er.testbed_selection_reading(sel_tb, val_self, tb.usefulness)))

# %% [markdown]
# ## 3.4 A real LLM on Amazon data
#
# The same computation on a real RoPE LLM: $M$ demonstrations (other users' training history → next item)
# × $N$ users of the dataset, each prompt holding the instruction, one demonstration slot and the user's
# last five titles; $L_u$ is the negative log-likelihood of the user's held-out item's title. Whether
# demonstrations help this model at all is chapter 2's question; the question here is narrower: does
# Effect_D *predict* what a demonstration does to this model, for better or worse? The model and the
# data are loaded once, by chapter 2's runner, which §3.5 uses too. Every demonstration passes the
# library's leakage guard for every user; the check below reads the prompts as built instead.
#
# The pairs are nested in users, and users differ in how much any demonstration moves their loss. A
# selector compares demonstrations *for one user*, so the checked quantity is the **within-user** rank
# correlation (over one user's demonstrations, averaged over users, CI from resampling users); the
# correlation over all pairs is shown beside it and also counts how well Effect_D orders the users.

# %%
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.runner import Runner

torch.set_num_threads(llm_threads)  # back from the tiny decoder's one thread (§3.3)
runner = Runner(cfg.name, dev, quiet=True, dtype=dtype)
lm, data = runner.lm(model), runner.data(dataset)
prov.set_model(lm.info.name, lm.info.source_file, lm.info.sha256)
llm = es.llm_pairs(lm, data.ds, data.split, n_demos, n_users, seed)
print(f"{lm.info.name}: {n_demos} demonstrations × {n_users} users = {n_demos * n_users} pairs; "
      f"slot {llm.slot} tokens")  # fmt: skip
checks.check(
    "§3.4 prompts (read from their tokens) showing the user's held-out title",
    es.leaks_as_built(llm, lm.tokenizer, data.ds, data.split), 0, kind="identity", fmt="{:.0f}", tfmt="{:g}",
)  # fmt: skip

# %% tags=["nbval-ignore-output"]
# computed once per key (configuration, data fingerprint, weights, code hash) in results/<profile>/
mats, from_cache = es.cached_matrices(
    results_dir(cfg.name) / "03_effect_llm_cache.json", llm, lm, dataset, data.fingerprint, dev, seed
)
print("matrices from cache:", from_cache)

# %%
G = mats["true gain"]
fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
ax[0].scatter(mats["Effect_D"], G, s=6, alpha=0.6)
lim = [min(mats["Effect_D"].min(), G.min()), max(mats["Effect_D"].max(), G.max())]
ax[0].plot(lim, lim, "k:", lw=0.8, label="y = x (calibrated)")
ax[0].set(xlabel="Effect_D (secant)", ylabel="true gain (nats)", title=f"{lm.info.name}, {dataset}")
ax[0].legend(fontsize=8)
ax[1].hist(G.ravel(), bins=30)
ax[1].axvline(0, color="k", lw=0.8)
ax[1].set(xlabel="true gain (nats)", ylabel="pairs", title="what one demonstration does to L_u")
fig.tight_layout()
plt.show()
abl = er.correlation_table({name: (m, G) for name, m in mats.items() if name != "true gain"}, seed=seed)
display(abl.round(3))
print(f"share of pairs where the demonstration helps (true gain > 0): {(G > 0).mean():.2f}")
print(f"mean true gain {G.mean():.3f} nats; mean Effect_D {mats['Effect_D'].mean():.3f}")
checks.check(f"{lm.info.name}: within-user Spearman(Effect_D, true gain), lower CI", abl.loc["Effect_D", "w. CI low"],
             0.0, at_least=True, fmt="{:.3g}", tfmt="{:g}")  # fmt: skip

# %% tags=["remove-input"]
display(Markdown(er.llm_reading(abl, G, mats["Effect_D"])))

# %% [markdown]
# What the ablations change: the *linear dual* $\Delta W_{ICL}q$ drops the softmax normalisation of
# chapter 1; the *derivative rate* $Z_D/Z_Z$ extrapolates the first infinitesimal step and grows without
# bound where a demonstration wins most of the attention, while the secant $Z_D/Z$ is bounded; the
# *gradient positions* restrict the sum to the target's positions or the prompt's end; *no RoPE
# positioning* encodes the demonstration at positions $0 \dots n-1$ instead of its slot. The intervals
# narrow with more pairs: `profile=full` runs more users and demonstrations, `model=gemma3-270m` a second
# model, and a larger model on a GPU (`profile=gpu`, `model=/path/to/model`) the regime where
# demonstrations help.
#
# ## 3.5 Choosing demonstrations by Effect_D for held-out users
#
# What Effect_D is for is choosing demonstrations. Here it chooses them for chapter 2's recommender,
# with chapter 2's runner, candidates, score variant and metrics, on test users of the dataset:
#
# * **Effect_D per user** (`python -m lrgd evaluate --method effect`): one forward and one backward pass
#   of the user's *validation* prompt (training history → second-to-last item) gives $\partial L_u/\partial o$;
#   Effect_D then ranks a fixed pool of $M$ candidate demonstrations (other users' final training
#   transitions, their keys and values computed once) and the best $k = 2$ that pass the leakage guard
#   go into the test prompt. The test item is never used to choose.
# * **Effect_D global** (`--method effect-global`): Effect_D averaged over validation users, one ranking
#   for every test user.
#
# Both take $\partial L_u/\partial o$ over the target title's positions (`lrgd.demos.effect_select`), the cheap
# choice (§3.4's ablation compares it with the other positions, on other users). They are compared with
# zero-shot, random and similarity demonstrations (chapter 2's selectors) on the same users and candidates.

# %%
P = cfg.eval
n_select_users = n_select_users or P.n_users
effect_pool = effect_pool or cfg.effect.select_pool
variant, _, _ = runner.validation_variant(model, seed)


def sel_cfg(method: str, k: int = 2, **params) -> EvalConfig:
    """One chapter-2 condition on this section's users (zero-shot takes k = 0); ``params``: the selector's."""
    return EvalConfig(dataset, method, k, n_users=n_select_users, model=model, seed=seed, params=params)


conditions = {
    "zero-shot": sel_cfg("zero-shot", 0),
    "random k=2": sel_cfg("random"),
    "similarity k=2": sel_cfg("similarity", similarity_pool=P.similarity_pool),
    "Effect_D per user k=2": sel_cfg("effect", effect_pool=effect_pool),
    "Effect_D global k=2": sel_cfg("effect-global", effect_pool=effect_pool, effect_users=P.n_valid_users),
}
sel_res = {name: runner.run(c) for name, c in conditions.items()}
print(
    f"{dataset}: {n_select_users} test users, {P.n_valid_users} validation users for the global ranking, "
    f"M = {effect_pool} candidate demonstrations; score variant {variant} (chosen on validation users)"
)
display(er.condition_table(sel_res, variant))

# %%
pairs = [
    ("Effect_D per user k=2", "random k=2"),
    ("Effect_D per user k=2", "zero-shot"),
    ("Effect_D per user k=2", "similarity k=2"),
    ("Effect_D global k=2", "random k=2"),
    ("Effect_D global k=2", "zero-shot"),
]
diff_table = er.paired_table(sel_res, pairs, variant, P.n_boot, seed)
display(diff_table.round(3).assign(**{c: diff_table[c].map(format_p) for c in ("p", "p (Holm)")}))
names = list(sel_res)
ndcg = [sel_res[n]["metrics"][variant]["NDCG@10"] for n in names]
err = np.array([[x["mean"] - x["lo"] for x in ndcg], [x["hi"] - x["mean"] for x in ndcg]])
fig, ax = plt.subplots(figsize=(7.2, 3.2))
means = [x["mean"] for x in ndcg]
ax.barh(names[::-1], means[::-1], xerr=err[:, ::-1], color=["C2", "C2", "C1", "C1", "C0"], capsize=3)
ax.set(
    xlabel=f"NDCG@10 ({variant} score), 95% CI", title=f"{model}, {dataset}: who chooses the demonstrations"
)
fig.tight_layout()
plt.show()

# %%
# the leakage guard, re-checked on what was actually put into the prompts (by id and by title)
sel_pool = runner.pool(conditions["Effect_D per user k=2"])
effect_records = [r for n in names if n.startswith("Effect_D") for r in runner.records(conditions[n])]
checks.check(
    "Effect_D selection: demonstrations showing a test user's held-out item",
    es.selection_leaks(sel_pool, effect_records), 0, kind="identity", fmt="{:.3g}", tfmt="{:g}",
)  # fmt: skip

# %% tags=["remove-input"]
chosen = er.chosen_effects(effect_records)  # Effect_D of each chosen demonstration on the validation item
display(Markdown(er.selection_reading(dict(zip(names, means)), diff_table, chosen, n_select_users)))

# %% [markdown]
# A first-order ranking is stretched most at its top, which is where a selector picks; and what is
# predicted on a validation item need not carry over to the test item (we have not separated the two).
# The `full` profile runs more test users and candidates; the GPU profile is there for a model large
# enough for demonstrations to help, which is where a selector can show more than "less harm".
#
# The Effect_D selectors are available to every experiment through the evaluator:
# `python -m lrgd evaluate --dataset amazon-games --method effect --k 2 --users 100`
# (`--effect-pool M`, and `--effect-users` for `effect-global`).
#
# ## Summary of this chapter's checks

# %%
display(checks.table())
checks.assert_all()
result = {
    "checks": checks.as_dict(),
    "testbed": {"correlations": corr_tb.round(4).to_dict(), "selection": sel_tb.round(4).to_dict()},
    "llm": {
        "model": lm.info.name,
        "dataset": dataset,
        "pairs": int(G.size),
        "spearman": abl.round(4).to_dict(),
    },
    "selection": {
        "dataset": dataset,
        "variant": variant,
        "users": n_select_users,
        "effect_pool": effect_pool,
        "ndcg10": dict(zip(names, ndcg)),
        "paired": diff_table.to_dict(orient="index"),
    },
    "provenance": prov.finish().as_dict(),
}
out = write_json(results_dir(cfg.name) / "03_effect_d.json", result)
print("results written to", out.relative_to(out.parents[2]))

# %% tags=["remove-input", "nbval-ignore-output"]
prov.finish()

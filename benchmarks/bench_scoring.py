"""KV-cached candidate scoring vs one full forward per candidate (SmolLM2-135M, fp32, CPU by default).

Same prompts (k=2 random demonstrations, about 300 tokens, Amazon Games) and 20 candidates each:

1. exactness: identical rankings and summed log-probs within 2e-3;
2. speed-up of cached scoring (``packed`` and ``batched``) over the naive loop, against the ideal bound
   20(P+T)/(P+20T) for prompt length P and mean title length T (the naive loop pays P+T tokens per
   candidate, the cached one P + 20T in all);
3. cached scoring's token throughput as a fraction of one plain forward over the same number of tokens.

The last line is ``kv-cache speedup: <x>x`` (the packed scorer, median over prompts).

    python benchmarks/bench_scoring.py [--prompts 3] [--device cpu] [--repeats 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from lrgd.llm import load_model
from lrgd.rec.data import leave_one_out, load_dataset, sample_candidates
from lrgd.rec.prompts import build_prompt, prompt_parts, random_demonstrations, titled
from lrgd.rec.rank import continuation_ids, continuation_sep, score_continuations, score_naive


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Minimum wall time over ``repeats`` calls (the least-disturbed run) and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--candidates", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.manual_seed(a.seed)
    lm = load_model(a.model, a.device)
    ds = load_dataset("amazon-games")
    split = leave_one_out(ds)
    users = sorted(split.test)
    rng = np.random.default_rng(a.seed)
    sep = continuation_sep(lm.info.chat)
    print(f"model {lm.info.name} · {lm.info.device} · fp32 · {torch.get_num_threads()} threads")
    rows = []
    for u in [users[j] for j in rng.choice(len(users), size=a.prompts, replace=False)]:
        hist, target = split.test[u]
        cands = sample_candidates(ds, u, target, hist, n=a.candidates, seed=a.seed)
        demos = random_demonstrations(ds, split, u, 2, np.random.default_rng([a.seed, len(u)]))
        prompt = build_prompt(lm.tokenizer, prompt_parts(titled(ds, hist)[-10:], demos), chat=lm.info.chat)
        conts = continuation_ids(lm.tokenizer, [ds.title(c) for c in cands], sep)
        ids = prompt.input_ids
        p, t = len(ids), float(np.mean([len(c) for c in conts]))
        with torch.inference_mode():
            score_continuations(lm.model, ids, conts)  # warm-up
            t_naive, naive = best_time(lambda ids=ids, conts=conts: score_naive(lm.model, ids, conts), 1)
            t_packed, packed = best_time(
                lambda ids=ids, conts=conts: score_continuations(lm.model, ids, conts), a.repeats
            )
            t_batched, batched = best_time(
                lambda ids=ids, conts=conts: score_continuations(lm.model, ids, conts, mode="batched"),
                a.repeats,
            )
            n_fed = p + sum(len(c) - 1 for c in conts)  # positions the cached scorer runs
            plain = torch.randint(100, 40000, (1, n_fed), generator=torch.Generator().manual_seed(0))
            t_plain, _ = best_time(lambda plain=plain: lm.model(input_ids=plain, use_cache=False), a.repeats)
        same_rank = all(
            np.array_equal(np.argsort(-naive.summed, kind="stable"), np.argsort(-s.summed, kind="stable"))
            for s in (packed, batched)
        )
        err = max(np.abs(packed.summed - naive.summed).max(), np.abs(batched.summed - naive.summed).max())
        bound = a.candidates * (p + t) / (p + a.candidates * t)
        rows.append((p, t, t_naive, t_packed, t_batched, t_plain, same_rank, err, bound))
        print(
            f"user {u}: P={p} T={t:.1f} · naive {t_naive:.2f} s · packed {t_packed:.2f} s · batched "
            f"{t_batched:.2f} s · plain forward of {n_fed} tokens {t_plain:.2f} s · same ranking {same_rank} "
            f"· max |Δ log-prob| {err:.1e}"
        )
    r = np.array([row[:6] + row[7:] for row in rows], dtype=float)
    speed_packed = np.median(r[:, 2] / r[:, 3])
    speed_batched = np.median(r[:, 2] / r[:, 4])
    bound = np.median(r[:, 7])
    print(
        f"all rankings identical: {all(row[6] for row in rows)}; "
        f"max |Δ summed log-prob| {r[:, 6].max():.1e} (≤ 2e-3)"
    )
    print(
        f"ideal bound 20(P+T)/(P+20T): {bound:.1f}x "
        f"(median P={np.median(r[:, 0]):.0f}, T={np.median(r[:, 1]):.1f})"
    )
    print(
        f"batched (cache repeated along the batch) speedup: {speed_batched:.1f}x "
        f"= {speed_batched / bound:.2f} of the bound"
    )
    print(f"packed speedup: {speed_packed:.1f}x = {speed_packed / bound:.2f} of the bound")
    print(f"packed throughput vs one plain forward over the same tokens: {np.median(r[:, 5] / r[:, 3]):.2f}")
    print(f"kv-cache speedup: {speed_packed:.1f}x")


if __name__ == "__main__":
    main()

"""Effect_D versus the brute-force true gain: LLM passes and wall time.

Effect_D needs one forward pass per demonstration and one forward + one backward per user
(a backward counts as one pass): M + 2N passes for M demonstrations × N users. The true gain
needs one zero-shot forward per user and one forward per (demonstration, user) pair: N + M·N.
Passes are counted by wrapping the model's forward (backwards counted per user state); wall time
is measured side by side at M = N = 20 (``--small``), where the top-10 overlap of the two
rankings of demonstrations (mean score over users) is also reported. Target: ≥ 20× fewer passes
at M = N = 100. The pass ratio is the last line printed.

    .venv/bin/python benchmarks/bench_effect.py [--small 20] [--large 100] [--model smollm2-135m]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from lrgd.demos.effect import demo_state, effect_matrix, loss_with_demo, user_state
from lrgd.demos.effect_study import llm_pairs
from lrgd.llm import load_model
from lrgd.rec.data import leave_one_out, load_dataset


class PassCounter:
    """Counts forward calls of a model (and backwards, added by the caller)."""

    def __init__(self, model) -> None:
        self.n = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, *_):
        self.n += 1


def setup(lm, dataset: str, m: int, n: int, seed: int = 0):
    """Demonstration tokens and slot prompts of chapter 3's §3.4 pairs (:func:`llm_pairs`)."""
    ds = load_dataset(dataset)
    pairs = llm_pairs(lm, ds, leave_one_out(ds), m, n, seed)
    return pairs.tokens, pairs.prompts


def effect_path(lm, dids, sps, counter):
    start = counter.n
    t0 = time.perf_counter()
    d_states = [demo_state(lm.model, sps[0], d) for d in dids]
    u_states = [user_state(lm.model, s) for s in sps]
    scores = effect_matrix(d_states, u_states).numpy()  # tensor products only, batched over demos
    passes = counter.n - start + len(sps)  # + one backward per user
    return scores, passes, time.perf_counter() - t0


def brute_path(lm, dids, sps, counter):
    start = counter.n
    t0 = time.perf_counter()
    base = [loss_with_demo(lm.model, s, None) for s in sps]
    gains = np.array([[base[j] - loss_with_demo(lm.model, s, d) for j, s in enumerate(sps)] for d in dids])
    return gains, counter.n - start, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="amazon-games")
    ap.add_argument("--small", type=int, default=20)
    ap.add_argument("--large", type=int, default=100)
    args = ap.parse_args()
    lm = load_model(args.model, device="cpu")
    counter = PassCounter(lm.model)

    dids, sps = setup(lm, args.dataset, args.small, args.small)
    e, e_passes, e_time = effect_path(lm, dids, sps, counter)
    g, g_passes, g_time = brute_path(lm, dids, sps, counter)
    top = min(10, len(dids))
    overlap = len(set(np.argsort(-e.mean(1))[:top]) & set(np.argsort(-g.mean(1))[:top]))
    k = args.small
    print(f"M = N = {k}: Effect_D {e_passes} passes, {e_time:.1f} s")
    print(f"M = N = {k}: true gain {g_passes} passes, {g_time:.1f} s")
    print(f"wall-time ratio at M = N = {k}: {g_time / e_time:.1f}x")
    print(f"top-{top} overlap of the two demonstration rankings: {overlap}/{top}")

    m = n = args.large
    dids, sps = setup(lm, args.dataset, m, n)
    _, e_passes, e_time = effect_path(lm, dids, sps, counter)
    brute_passes = n + m * n  # one zero-shot forward per user + one forward per pair (not run)
    print(f"M = N = {m}: Effect_D {e_passes} passes (measured, {e_time:.1f} s)")
    print(f"M = N = {m}: true gain {brute_passes} passes (counted, not run)")
    print(f"passes, true gain vs Effect_D: {brute_passes / e_passes:.1f}x")


if __name__ == "__main__":
    main()

"""How much cheaper is the dual rebuild than the model? One forward pass of a real recommendation
prompt versus rebuilding all layers × heads at the final position from the captured q/k/v
(grouped by KV head, no expanded copies). Target: ≥ 100×. The ratio is the last line printed.

    .venv/bin/python benchmarks/bench_equivalence.py [--model smollm2-135m] [--dataset amazon-games]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lrgd.dual.equivalence import split_at, user_prompt
from lrgd.llm import forward_captured, load_model
from lrgd.rec.data import leave_one_out, load_dataset


def best_of(fn, repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--dataset", default="amazon-games")
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.manual_seed(0)
    lm = load_model(args.model, device="cpu")
    ds = load_dataset(args.dataset)
    split = leave_one_out(ds)
    user = sorted(split.test)[0]
    prompt = user_prompt(lm, ds, split, user, n_demos=2, n_candidates=20, seed=0)  # chapter 1's prompt
    ids = prompt.input_ids[None]
    demo = prompt.demo_mask
    layers = forward_captured(lm.model, prompt.input_ids)

    def forward() -> None:
        with torch.no_grad():
            lm.model(input_ids=ids, use_cache=False)

    def rebuild() -> None:
        with torch.inference_mode():
            for li in layers:
                split_at(layers[li], demo, dtype=torch.float32)

    t_fwd = best_of(forward, args.repeats)
    t_reb = best_of(rebuild, args.repeats * 5)
    n = lm.info.n_layers * lm.info.n_heads
    print(f"model {lm.info.name}, prompt {len(prompt.input_ids)} tokens, threads {torch.get_num_threads()}")
    print(f"forward pass:             {t_fwd * 1e3:8.2f} ms")
    print(f"rebuild {n} heads (fp32): {t_reb * 1e3:8.2f} ms")
    print(f"rebuild vs forward: {t_fwd / t_reb:.0f}x")


if __name__ == "__main__":
    main()

"""Loading a packaged model: first use (de-quantise the GGUF into the cache, then load) vs a cached load.

The first load converts the GGUF once into ``$LRGD_CACHE/models/<name>`` (here a fresh temporary cache,
so the run does not touch yours); every later load reads that plain folder. This replaces the timed
assertion ``load < 30 s`` that used to sit in ``tests/test_core.py`` (the test now checks that a second
load does not convert again).

The last line is ``cached load speedup: <x>x`` (first use / median cached load).

    python benchmarks/bench_core.py [--model smollm2-135m] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="lrgd-bench-cache-") as cache:
        os.environ["LRGD_CACHE"] = cache  # read by lrgd.config.cache_dir at each call
        from lrgd.llm import load_model

        first = timed(lambda: load_model(a.model, device="cpu"))
        cached = [timed(lambda: load_model(a.model, device="cpu")) for _ in range(a.repeats)]
    warm = statistics.median(cached)
    print(f"model {a.model} · cpu · {os.cpu_count()} cores")
    print(f"first use (convert GGUF + load): {first:.1f} s")
    print(f"cached load: median {warm:.2f} s over {a.repeats} (min {min(cached):.2f}, max {max(cached):.2f})")
    print(f"cached load speedup: {first / warm:.1f}x")


if __name__ == "__main__":
    main()

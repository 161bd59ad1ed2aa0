"""Chapter 4's results at a profile, computed outside the notebook (the ``full`` run takes hours).

    python scripts/full_robust.py --profile full --part testbed     # §4.1–4.6 (resumable per table)
    python scripts/full_robust.py --profile full --part testbed --tables drift   # only those tables
                                  # (processes may share the tables out; the one completing the set writes it)
    python scripts/full_robust.py --profile full --part windows     # §4.6b, ml-100k calendar windows
    python scripts/full_robust.py --profile full --part optimiser   # §4.8, the optimiser on real data
    python scripts/full_robust.py --profile full --part perturbed   # §4.7, the reader's curve, the LLM check

Each part writes what the chapter reads (``results/<profile>/robust/``, keyed by configuration, data,
weights and code), so the page then renders it without computing; the parts may run side by side, one
core each. The trained weights are restored from ``results/<profile>/models/`` when committed there.
Commit after (or during) a run: ``git add -f results/<profile>/robust results/<profile>/models``; the
``perturbed`` part's runs are runner summaries: it prints their files (``results/<profile>/eval/``).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from lrgd.config import get_profile
from lrgd.errors import LRGDError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--part", choices=("testbed", "windows", "optimiser", "perturbed"), required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads")
    ap.add_argument("--tables", default="", help="--part testbed: only these tables (comma-separated, e.g. "
                    "'drift,trust'; default: every table; a wrong name lists them)")  # fmt: skip
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    try:
        prof = get_profile(a.profile)
        if a.part == "testbed":
            from lrgd.results import committed_weights, file_hash
            from lrgd.robust import testbed as rt
            from lrgd.testbeds import recworld as rw
            from lrgd.testbeds import tiny_decoder as td

            base = rw.RecWorld.generate(prof.world, a.seed)
            with committed_weights(td.weights_path(base, prof.decoder, a.seed), a.profile):
                decoder = td.load_or_train(base, prof.decoder, seed=a.seed, device="cpu")
            only = [t.strip().replace("-", " ") for t in a.tables.split(",") if t.strip()] or None
            tables, hit = rt.chapter_tables(decoder.model, file_hash(decoder.path, 16), prof, a.seed, only)
            n_all = len(rt.table_names(prof, a.seed))
            print(f"testbed tables stored at {a.profile}: {len(tables)} of {n_all}")
        else:
            from lrgd.rec.runner import Runner

            runner = Runner(a.profile, "cpu", quiet=False)
            if a.part == "perturbed":
                from lrgd.robust import real_perturb as rp

                before = [rp.stored(runner, c) is not None for c in rp.perturbed_configs(prof, a.seed)]
                rg = rp.reader_curve(runner, prof.robust, prof.reader.models[0], a.seed, prof.eval.n_boot)
                chk = rp.llm_check(runner, prof, a.seed, prof.eval.n_boot)
                print(rg.to_string(index=False), chk["table"].to_string(), rp.llm_reading(chk), sep="\n")
                hit = all(before)
                print(
                    "files:",
                    *sorted({str(rp.stored_path(runner, c)) for c in rp.perturbed_configs(prof, a.seed)}),
                )
            elif a.part == "windows":
                from lrgd.robust import windows as rwin

                _, hit = rwin.window_study(runner, prof.robust, prof.reader.models[0], a.seed, verbose=True)
            else:
                from lrgd.robust import real

                _, hit = real.optimiser_run(runner, prof, a.seed)
    except LRGDError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    done = "already cached" if hit else "computed"
    print(f"{a.part} at {a.profile}: {done} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

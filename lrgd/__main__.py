"""Command line: ``python -m lrgd evaluate ...`` (also installed as ``lrgd``).

Example::

    python -m lrgd evaluate --dataset amazon-games --method similarity --k 2 --users 100 --profile ci

evaluates one condition with a progress bar, resumes from the per-user file if an earlier run stopped,
prints HR/NDCG/MRR with bootstrap 95% CIs and writes the summary JSON under ``results/<profile>/eval/``.
A bad argument ends with ``error: <what was wrong and how to fix it>`` and exit status 2; nothing is
written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrgd.errors import LRGDError


def _parser() -> argparse.ArgumentParser:
    from lrgd.config import PROFILES
    from lrgd.rec.data import DATASETS
    from lrgd.rec.evaluate import METHODS, MODES, ORDERS, SPLITS

    p = argparse.ArgumentParser(prog="python -m lrgd", description="LRGD companion command line")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="evaluate one recommender condition (resumable)")
    e.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    e.add_argument("--method", required=True, help=f"one of: {', '.join(METHODS)}")
    e.add_argument("--k", type=int, default=0, help="demonstrations in the prompt (0 for zero-shot)")
    e.add_argument("--users", type=int, default=None, help="users to evaluate (default: the profile's)")
    e.add_argument("--all-users", action="store_true", help="every eligible user")
    e.add_argument("--profile", default=None, help=f"one of: {', '.join(PROFILES)} (default ci)")
    e.add_argument("--model", default="smollm2-135m", help="smollm2-135m | gemma3-270m | a local HF folder")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    e.add_argument("--split", default="test", help=f"one of: {', '.join(SPLITS)}")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--candidates", type=int, default=20, help="candidates per user (target + negatives)")
    e.add_argument("--history", type=int, default=10, help="most recent history titles in the prompt")
    e.add_argument("--list-candidates", action="store_true", help="also list the candidates in the prompt")
    e.add_argument("--order", default="sampled", help=f"candidate order: {', '.join(ORDERS)}")
    e.add_argument("--mode", default="score", help=f"{' | '.join(MODES)}")
    e.add_argument("--effect-pool", type=int, default=30, help="effect selectors: candidate demonstrations")
    e.add_argument("--effect-users", type=int, default=20, help="effect-global: validation users averaged")
    e.add_argument("--max-prompt-tokens", type=int, default=None, help="context budget (default: model's)")
    e.add_argument("--results-dir", type=Path, default=None, help="root instead of results/ (tests)")
    e.add_argument(
        "--data-dir", type=Path, default=None, help="folder holding <dataset>/ (else the search path)"
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def _evaluate(a: argparse.Namespace) -> int:
    from lrgd.config import get_profile
    from lrgd.rec.evaluate import EvalConfig, Runner

    profile = get_profile(a.profile)
    preset = profile.eval
    n_users = None if a.all_users else (a.users if a.users is not None else preset.n_users)
    cfg = EvalConfig(
        dataset=a.dataset,
        method=a.method,
        k=a.k,
        n_users=n_users,
        split=a.split,
        model=a.model,
        n_candidates=a.candidates,
        history_len=a.history,
        seed=a.seed,
        list_candidates=a.list_candidates,
        order=a.order,
        mode=a.mode,
        similarity_pool=preset.similarity_pool,
        max_prompt_tokens=a.max_prompt_tokens,
        effect_pool=a.effect_pool,
        effect_users=a.effect_users,
    ).validate()
    runner = Runner(profile.name, a.device, quiet=a.quiet, results_root=a.results_dir, data_dir=a.data_dir)
    res = runner.run(cfg)
    print(
        f"{cfg.dataset} · {cfg.name} · {res['n_users']} users · "
        f"{res['provenance']['computed_users']} computed"
    )
    for variant, ms in res["metrics"].items():
        cells = "  ".join(f"{m} {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for m, v in ms.items())
        print(f"  {variant:>9}: {cells}")
    for key in ("truncated_users", "guarded", "fallback_demos", "parse_failure_rate"):
        if key in res:
            print(f"  {key}: {res[key]}")
    print(f"  {res['provenance']['seconds_per_user']:.2f} s per user when computed")
    _, final = runner.paths(cfg)
    print(f"results: {final}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _evaluate(args)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished users are saved; run the same command again to resume", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

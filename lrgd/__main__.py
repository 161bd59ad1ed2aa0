"""Command line: ``python -m lrgd evaluate ...`` (also installed as ``lrgd``).

Example::

    python -m lrgd evaluate --dataset amazon-games --method similarity --k 2 --users 100 --profile ci

evaluates one condition with a progress bar, resumes from the per-user file if an earlier run stopped,
prints HR/NDCG/MRR with bootstrap 95% CIs and writes the summary JSON under ``results/<profile>/eval/``.
A bad argument, an unknown or missing model and an unavailable device end with
``error: <what was wrong and how to fix it>`` and exit status 2; nothing is written. The options of a
method's parameters (``--similarity-pool``, ``--effect-pool``, ``--effect-users``, ...) are generated from
the parameters each registered selector or reference declares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lrgd.errors import LRGDError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    from lrgd.config import PROFILES
    from lrgd.rec.conditions import MODES, ORDERS, SPLITS, methods
    from lrgd.rec.data import DATASETS

    p = argparse.ArgumentParser(prog="python -m lrgd", description="LRGD companion command line")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("evaluate", help="evaluate one recommender condition (resumable)")
    e.add_argument("--dataset", required=True, help=f"one of: {', '.join(DATASETS)}")
    e.add_argument("--method", required=True, help=f"one of: {', '.join(methods())}")
    e.add_argument("--k", type=int, default=0, help="demonstrations in the prompt (0 for zero-shot)")
    e.add_argument("--users", type=int, default=None, help="users to evaluate (default: the profile's)")
    e.add_argument("--all-users", action="store_true", help="every eligible user")
    e.add_argument("--profile", default=None, help=f"one of: {', '.join(PROFILES)} (default ci)")
    e.add_argument(
        "--model", default="smollm2-135m",
        help="smollm2-135m | gemma3-270m | a local HF folder | trained:reader | trained:reader-anon",
    )  # fmt: skip
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    e.add_argument("--split", default="test", help=f"one of: {', '.join(SPLITS)}")
    e.add_argument("--seed", type=int, default=0, help="≥ 0")
    e.add_argument("--candidates", type=int, default=20, help="candidates per user (target + negatives)")
    e.add_argument("--history", type=int, default=10, help="most recent history titles in the prompt")
    e.add_argument("--list-candidates", action="store_true", help="also list the candidates in the prompt")
    e.add_argument("--order", default="sampled", help=f"candidate order: {', '.join(ORDERS)}")
    e.add_argument("--mode", default="score", help=f"{' | '.join(MODES)}")
    e.add_argument(
        "--guard", default="held-out",
        help="what demonstrations may not show: held-out (the user's valid/test items too) | own",
    )  # fmt: skip
    e.add_argument(
        "--max-prompt-tokens", type=int, default=None, help="context budget ≥ 1 (default: model's)"
    )
    e.add_argument("--max-new-tokens", type=int, default=96, help="generate mode: tokens to generate")
    e.add_argument("--results-dir", type=Path, default=None, help="root instead of results/ (tests)")
    e.add_argument(
        "--data-dir", type=Path, default=None, help="folder holding <dataset>/ (else the search path)"
    )
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    g = e.add_argument_group("method parameters", "declared by the selectors and references that take them")
    for param, owners, default in _method_params().values():
        kind = _bool if param.type is bool else param.type
        g.add_argument(
            _flag(param.name), dest=f"param_{param.name}", type=kind, default=None,
            metavar=param.type.__name__.upper(),
            help=f"{param.help} ({', '.join(owners)}; default {default})",
        )  # fmt: skip
    return p


def _method_params() -> dict:
    """Parameter name → (its declaration, the methods declaring it, its default in words)."""
    from lrgd.rec.references import REFERENCES
    from lrgd.rec.select import SELECTORS

    out: dict = {}
    for registry in (SELECTORS, REFERENCES):
        for method in registry:
            from_profile = getattr(registry.get(method), "profile_defaults", {})
            for param in registry.params(method):
                default = (
                    f"the profile's {from_profile[param.name]}"
                    if param.name in from_profile
                    else param.default
                )
                out.setdefault(param.name, (param, [], default))[1].append(method)
    return out


def _evaluate(a: argparse.Namespace) -> int:
    from lrgd.config import get_profile
    from lrgd.rec.conditions import EvalConfig
    from lrgd.rec.runner import Runner

    profile = get_profile(a.profile)
    n_users = None if a.all_users else (a.users if a.users is not None else profile.eval.n_users)
    params = {
        name[len("param_") :]: v for name, v in vars(a).items() if name.startswith("param_") and v is not None
    }
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
        guard=a.guard,
        max_prompt_tokens=a.max_prompt_tokens,
        max_new_tokens=a.max_new_tokens,
        params=params,
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
    _, final = runner.paths(cfg, res["provenance"]["key"])
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
    except OSError as exc:  # e.g. an unwritable --results-dir
        where = exc.filename or "a results file"
        print(
            f"error: cannot write {where}: {exc.strerror or exc}; choose a writable --results-dir",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished users are saved; run the same command again to resume", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

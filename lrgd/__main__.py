"""Command line: ``python -m lrgd evaluate ...`` (also installed as ``lrgd``).

Examples::

    python -m lrgd optimize --dataset ml-100k --model trained:reader-anon --out demos.json --profile ci
    python -m lrgd evaluate --method optimized --demos demos.json --k 8 --dataset ml-100k --guard own \
        --model trained:reader-anon
    python -m lrgd evaluate --dataset amazon-games --method similarity --k 2 --users 100 --profile ci

evaluates one condition with a progress bar, resumes from the per-user file if an earlier run stopped,
prints HR/NDCG/MRR with bootstrap 95% CIs and writes the summary JSON under ``results/<profile>/eval/``.
A bad argument, an unknown or missing model and an unavailable device end with
``error: <what was wrong and how to fix it>`` and exit status 2; nothing is written. The options of a
method's parameters (``--similarity-pool``, ``--effect-pool``, ``--effect-users``, ...) are generated from
the parameters each registered selector or reference declares.

``optimize`` runs the two-stage optimiser (:mod:`lrgd.robust.runner_objective`) with a progress bar,
writes its state atomically to ``<out>.state.json`` after stage 1 and after every stage-2 iteration, and
resumes from it when run again with the same arguments (identical result); other arguments are refused
unless ``--restart``. The demonstration file ``--out`` is what ``evaluate --method optimized --demos``
reads.

``grid`` computes the main results grid of a profile (:mod:`lrgd.grid`) on a dask cluster, with a
progress bar over tasks, publishing each summary under ``results/<profile>/grid/``; published tasks are
skipped, so running it again resumes. ``--dry-run`` prints how many tasks are published and missing and
the estimated compute of the missing ones, and computes nothing::

    python -m lrgd grid --profile full --dry-run
    python -m lrgd grid --profile full --workers 2 --threads 1            # a local cluster
    python -m lrgd grid --profile gpu --scheduler tcp://host:8786 --device cuda   # or LRGD_SCHEDULER
    python -m lrgd grid --profile ci --workers 0 --only-kind reference   # in this process, no dask
    git add -f $(python -m lrgd grid --profile full --files)   # what a later session resumes from
    python -m lrgd grid --profile full --prune           # delete summaries no current key names
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
    e.add_argument("--dtype", default="auto", help=_DTYPE_HELP)
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
    _optimize_parser(sub)
    _grid_parser(sub)
    g = e.add_argument_group("method parameters", "declared by the selectors and references that take them")
    for param, owners, default in _method_params().values():
        kind = _bool if param.type is bool else param.type
        g.add_argument(
            _flag(param.name), dest=f"param_{param.name}", type=kind, default=None,
            metavar=param.type.__name__.upper(),
            help=f"{param.help} ({', '.join(owners)}; default {default})",
        )  # fmt: skip
    return p


def _optimize_parser(sub) -> None:
    """``optimize``: the two-stage optimiser of one global demonstration set (sizes from the profile)."""
    o = sub.add_parser("optimize", help="optimise one global demonstration set (resumable)")
    o.add_argument("--dataset", required=True, help="the dataset whose validation users choose the set")
    o.add_argument("--model", default="trained:reader-anon", help="trained:reader-anon | smollm2-135m | ...")
    o.add_argument("--profile", default=None, help="ci | full | gpu (sizes: the profile's robust.opt_*)")
    o.add_argument("--out", type=Path, required=True, help="the demonstration file to write (JSON)")
    for flag, kind, what in (
        ("--k", int, "demonstrations in the set (opt_k)"),
        ("--pool", int, "candidate demonstrations M (opt_pool)"),
        ("--valid-users", int, "validation users, half held out (opt_valid_users)"),
        ("--test-users", int, "first test users kept out of choosing (opt_test_users)"),
        ("--max-iters", int, "stage-2 iterations (opt_max_iters)"),
        ("--max-moves", int, "swaps sampled per iteration (opt_max_moves)"),
    ):
        o.add_argument(flag, type=kind, default=None, help=f"{what}; default from the profile")
    o.add_argument("--no-guard", action="store_true", help="no collapse guard (no early stop, keep the last)")
    o.add_argument("--guard", default="own", help="leakage guard: own | held-out")
    o.add_argument("--seed", type=int, default=0, help="≥ 0")
    o.add_argument("--restart", action="store_true", help="discard a state file written by other arguments")
    o.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    o.add_argument("--dtype", default="auto", help=_DTYPE_HELP)
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.add_argument("--results-dir", type=Path, default=None, help="root instead of results/ (tests)")
    o.add_argument("--data-dir", type=Path, default=None, help="folder holding <dataset>/")


def _grid_parser(sub) -> None:
    """``grid``: the main results grid of a profile (:mod:`lrgd.grid`) through dask.distributed."""
    g = sub.add_parser("grid", help="compute the main results grid of a profile (dask; resumable)")
    g.add_argument("--profile", default=None, help="ci | full | gpu (default ci)")
    g.add_argument("--dry-run", action="store_true", help="print published / missing tasks and the estimate")
    g.add_argument(
        "--scheduler", default=None,
        help="a running dask scheduler, tcp://host:8786 (default $LRGD_SCHEDULER, else a local cluster); "
        "'sequential': this process, no dask",
    )  # fmt: skip
    g.add_argument("--workers", type=int, default=2, help="local cluster: worker processes (0: no dask)")
    g.add_argument("--threads", type=int, default=1, help="torch threads per worker (one task at a time)")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (on the workers)")
    g.add_argument("--dtype", default="auto", help=_DTYPE_HELP)
    g.add_argument("--only-kind", default=None, help="only the tasks of one kind: llm | reference | reader")
    g.add_argument("--only-model", default=None, help="only the tasks of one model (e.g. gemma3-270m)")
    g.add_argument("--results-dir", type=Path, default=None, help="root instead of results/ (tests)")
    g.add_argument("--data-dir", type=Path, default=None, help="folder holding <dataset>/")
    g.add_argument("--quiet", action="store_true", help="no plan line and no progress bar")
    g.add_argument(
        "--files", action="store_true",
        help="print the files to commit (published summaries; records and candidates of unfinished tasks; "
        "trained weights, copied from the cache to results/<profile>/models/)",
    )  # fmt: skip
    g.add_argument("--prune", action="store_true", help="delete published files no current task names")


_DTYPE_HELP = "auto (bfloat16 on cuda, float32 elsewhere) | float32 | bfloat16 | float16"


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
    method = cfg.method_object(profile)
    if hasattr(method, "check_config"):  # e.g. the optimized selector's file must match the condition
        method.check_config(cfg)
    runner = Runner(
        profile.name, a.device, quiet=a.quiet, results_root=a.results_dir, data_dir=a.data_dir, dtype=a.dtype
    )
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


def _optimize_spec(a: argparse.Namespace, profile):
    from lrgd.robust.runner_objective import OptimizeSpec

    r = profile.robust
    pick = lambda v, d: d if v is None else v  # noqa: E731
    return OptimizeSpec(
        dataset=a.dataset,
        model=a.model,
        k=pick(a.k, r.opt_k),
        n_pool=pick(a.pool, r.opt_pool),
        n_valid_users=pick(a.valid_users, r.opt_valid_users),
        n_test_users=pick(a.test_users, r.opt_test_users),
        max_iters=pick(a.max_iters, r.opt_max_iters),
        max_moves=pick(a.max_moves, r.opt_max_moves),
        patience=r.opt_patience,
        collapse_guard=not a.no_guard,
        seed=a.seed,
        guard=a.guard,
    ).validate()


def _optimize(a: argparse.Namespace) -> int:
    """Run (or resume) the optimiser; the state is written atomically next to ``--out`` after every step."""
    from lrgd.config import get_profile
    from lrgd.rec.runner import Runner
    from lrgd.robust import runner_objective as ro

    profile = get_profile(a.profile)
    spec = _optimize_spec(a, profile)
    runner = Runner(
        profile.name, a.device, quiet=a.quiet, results_root=a.results_dir, data_dir=a.data_dir, dtype=a.dtype
    )
    res, _ = ro.optimise_to_file(runner, spec, a.out, restart=a.restart, verbose=not a.quiet)
    s = res.search
    n_valid = f"{len(res.train)}+{len(res.holdout)}"
    print(f"{spec.dataset} · {spec.model} · k={spec.k} · pool {spec.n_pool} · {n_valid} validation users")
    h0, hb = s.holdout_loss[0], s.holdout_loss[s.best_iter]
    print(
        f"  held-out validation loss {h0:.4f} (stage 1) → {hb:.4f} (iteration {s.best_iter}; {s.stopped_by})"
    )
    print(f"  {res.passes} prompts scored ({res.stage1_passes} in stage 1); {res.guarded} guarded demos")
    print(
        f"demonstrations: {a.out}  (use: python -m lrgd evaluate --method optimized --demos {a.out} "
        f"--k {spec.k} --dataset {spec.dataset} --model {spec.model} --guard {spec.guard})"
    )
    return 0


def _grid_tasks(a: argparse.Namespace) -> list:
    """The profile's grid tasks, filtered by ``--only-kind`` and ``--only-model`` (checked against it)."""
    from lrgd.config import get_profile
    from lrgd.errors import ConfigError
    from lrgd.grid import KINDS, grid_tasks

    tasks = grid_tasks(get_profile(a.profile).name)
    if a.only_kind is not None:
        if a.only_kind not in KINDS:
            raise ConfigError(f"--only-kind {a.only_kind!r} is not a kind; choose one of {', '.join(KINDS)}")
        tasks = [t for t in tasks if t.kind == a.only_kind]
    if a.only_model is not None:
        models = sorted({t.cfg.model for t in tasks if t.kind != "reference"})
        if a.only_model not in models:
            raise ConfigError(
                f"--only-model {a.only_model!r} has no task in this grid; choose one of {', '.join(models)}"
            )
        tasks = [t for t in tasks if t.kind != "reference" and t.cfg.model == a.only_model]
    return tasks


def _grid(a: argparse.Namespace) -> int:
    """Plan (``--dry-run``) or compute the grid; failed tasks are named one per line, then summed up."""
    from lrgd.config import DTYPES, get_profile, results_dir
    from lrgd.errors import ConfigError
    from lrgd.grid import grid_files, grid_status, run_grid

    if a.dtype not in DTYPES:  # checked before a cluster starts
        raise ConfigError(f"--dtype {a.dtype!r} is unknown; choose one of {', '.join(DTYPES)}")
    profile = get_profile(a.profile).name
    if a.prune and (a.only_kind or a.only_model):  # a filtered task list would call the others stale
        raise ConfigError("--prune weighs every task of the profile; drop --only-kind and --only-model")
    tasks = _grid_tasks(a)
    where = dict(scheduler=a.scheduler, workers=a.workers, threads=a.threads, device=a.device, dtype=a.dtype,
                 results_root=a.results_dir, data_dir=a.data_dir)  # fmt: skip
    if a.files or a.prune:
        keep, stale = grid_files(profile, tasks, a.dtype, a.results_dir, a.data_dir)
        if a.prune:
            for path in stale:
                path.unlink()
            print(f"pruned {len(stale)} published file(s) that no current task names", file=sys.stderr)
        for path in keep if a.files else []:
            print(path)
        return 0
    if a.dry_run:
        status = grid_status(profile, tasks, **where)
        print("\n".join(status.lines(profile)))
        status.check()  # a task that cannot be located (missing data or model) fails the dry run too
        return 0
    summaries = run_grid(profile, tasks, progress=not a.quiet, **where)
    root = a.results_dir / profile if a.results_dir is not None else results_dir(profile)
    print(f"{len(summaries)} grid tasks published under {root / 'grid'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return _evaluate(args)
        if args.command == "optimize":
            return _optimize(args)
        if args.command == "grid":
            return _grid(args)
    except LRGDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. an unwritable --results-dir
        where = exc.filename or "a results file"
        fix = "--out (and --results-dir)" if args.command == "optimize" else "--results-dir"
        print(f"error: cannot write {where}: {exc.strerror or exc}; choose a writable {fix}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        what = "the last iteration is" if args.command == "optimize" else "finished users are"
        print(f"interrupted: {what} saved; run the same command again to resume", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())

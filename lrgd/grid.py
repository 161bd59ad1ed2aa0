"""The main results grid (chapter 6): dataset × model × method, one :class:`~lrgd.rec.conditions.EvalConfig`
per task, every task independent.

:func:`grid_tasks` lists the tasks of a profile (its ``.grid`` section, :class:`lrgd.config.GridSizes`):

* **test** tasks make the rows of one table per dataset, all on the same first ``n_users`` test users of
  the seeded order and the same saved candidates (so every pair of rows is a paired comparison):
  the LLM selectors per model (k = 0 for zero-shot), the Effect_D selectors, the non-LLM references, and
  the trained reader of chapter 2b at k = 0, at every (selector, k) of its profile, with its own Effect_D
  (plain and robust) and with the two-stage optimiser's global set (``two-stage``, chosen on validation
  users);
* **valid** tasks make the choices, on validation users only: the LLM score variant (chapter 2's
  :meth:`~lrgd.rec.runner.Runner.validation_variant`) and the reader's (selector, k).

A finished task is *published*: its summary (metrics with CIs, per-user ranks, provenance) is copied to
``results/<profile>/grid/<dataset>/<file>``, the runner's summary name, which carries the key of its full
configuration, data fingerprint, model weights and code (:meth:`Runner.key`). ``results/full/grid/`` is
committed, so the book renders the published tables without computing; change anything a number depends
on and its key changes, so the table shows it as missing instead of serving a stale number.

**Execution** (:func:`run_grid`): the missing tasks run on a ``dask.distributed`` cluster — a
``LocalCluster`` of worker processes by default, or an existing cluster given by its scheduler address
(``scheduler="tcp://host:8786"`` or ``$LRGD_SCHEDULER``, read by :func:`lrgd.config.scheduler_address`),
e.g. one worker per GPU started with ``dask worker tcp://host:8786 --nthreads 1``. Each worker keeps one
Runner per :class:`Setup` (so a model loads once per worker) and returns the summary; this process
publishes it, so the results land in the same store as :func:`run_task`, whichever machine computed
them. ``workers=0`` (or ``scheduler="sequential"``) runs the tasks here, without dask (a notebook).
Every machine needs the same code, data and models: a worker whose key differs from this process's
is reported as a failed task instead of publishing under a key the tables would never read.

>>> tasks = grid_tasks("ci")  # doctest: +SKIP
>>> runner = Runner("full")  # doctest: +SKIP
>>> done, missing = plan(runner, grid_tasks("full"))  # doctest: +SKIP
>>> summaries = run_grid("ci", grid_tasks("ci"), workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
import threading
import traceback
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from lrgd.config import get_profile, resolve_device, resolve_dtype, scheduler_address
from lrgd.errors import ConfigError, LRGDError
from lrgd.rec.conditions import EvalConfig
from lrgd.results import atomic_write_text, commit_weights, restore_weights

__all__ = [
    "KINDS",
    "GridTask",
    "Setup",
    "estimate_seconds",
    "export_weights",
    "grid_tasks",
    "import_weights",
    "load",
    "plan",
    "published_path",
    "run_grid",
    "run_task",
    "runner_for",
]

#: the kinds of model a task runs (:attr:`GridTask.kind`)
KINDS = ("llm", "reference", "reader")

#: seconds per user assumed for a condition no run on disk has measured (LLM: per 100M parameters)
DEFAULT_SECONDS = {"llm": 1.2, "reader": 0.02, "reference": 0.002}
#: rough size of each model, in units of 100M parameters (scales DEFAULT_SECONDS["llm"])
MODEL_SCALE = {"smollm2-135m": 1.35, "gemma3-270m": 2.7}


@dataclass(frozen=True)
class GridTask:
    """One cell of the grid: the condition ``cfg``, its ``role`` (``test``: a table row; ``valid``: a choice
    made on validation users) and the ``kind`` of model (``llm`` | ``reader`` | ``reference``)."""

    cfg: EvalConfig
    role: str
    kind: str

    @property
    def label(self) -> str:
        c = self.cfg
        who = "ref" if self.kind == "reference" else c.model
        return f"{c.dataset} {c.split} {who} {c.method} k={c.k}"


def grid_tasks(profile: str, seed: int = 0) -> list[GridTask]:
    """Every task of ``profile``'s grid, in a fixed order (valid tasks first: they are the choices)."""
    prof = get_profile(profile)
    G, E, R = prof.grid, prof.eval, prof.reader
    valid: list[GridTask] = []
    test: list[GridTask] = []
    for model in G.models:  # the score variant of each LLM (chapter 2, §2.3)
        for name in E.valid_datasets:
            n = E.n_valid_users
            cfg = EvalConfig(name, "zero-shot", split="valid", n_users=n, model=model, seed=seed)
            valid.append(GridTask(cfg, "valid", "llm"))
    effect_params = {"effect_pool": prof.effect.select_pool}
    rb = prof.robust  # the robust score of chapter 4 (Eq. (R1)) for the reader's robust Effect_D row
    robust_params = {"copies": rb.n_copies, "lam": rb.lam, "perturbation": rb.robust_perturbation,
                     "rate": rb.robust_rate}  # fmt: skip
    for name in G.datasets:
        icl = G.icl_datasets is None or name in G.icl_datasets
        for i, model in enumerate(G.models):
            methods = G.llm_methods if i == 0 else G.other_model_methods
            if i == 0 and name in G.effect_datasets:
                methods = (*methods, *G.effect_methods)
            for method in methods:
                k = 0 if method == "zero-shot" else G.k
                if k and not icl:
                    continue
                params = {}
                if method.startswith("effect"):
                    params = dict(effect_params)
                    if method == "effect-global":
                        params["effect_users"] = E.n_valid_users
                cfg = EvalConfig(name, method, k, n_users=G.n_users, model=model, seed=seed, params=params)
                test.append(GridTask(cfg, "test", "llm"))
        for ref in G.references:  # the validation runs let chapter 6 choose a baseline off the test users
            test.append(GridTask(EvalConfig(name, ref, n_users=G.n_users, seed=seed), "test", "reference"))
            cfg = EvalConfig(name, ref, n_users=E.n_valid_users, split="valid", seed=seed)
            valid.append(GridTask(cfg, "valid", "reference"))
        if G.reader and name in G.reader_datasets:
            rows = [("zero-shot", 0)] + [(s, k) for s in R.eval_selectors for k in R.eval_ks]
            if G.reader_effect_k:  # the reader's own Effect_D (chapter 2b, §2b.5), plain and robust (ch. 4)
                rows += [("reader-effect", G.reader_effect_k), ("reader-robust-effect", G.reader_effect_k)]
            for method, k in rows:
                params = robust_params if method == "reader-robust-effect" else {}
                for split, n in (("valid", R.n_valid_users), ("test", G.n_users)):
                    cfg = EvalConfig(name, method, k, n_users=n, split=split, model=G.reader, seed=seed,
                                     guard="own", params=params)  # fmt: skip
                    (valid if split == "valid" else test).append(GridTask(cfg, split, "reader"))
            if G.reader_two_stage and G.n_users is not None:  # chosen on validation users: a test row only
                params = {"pool": rb.opt_pool, "valid_users": rb.opt_valid_users, "test_users": G.n_users,
                          "max_iters": rb.opt_max_iters, "max_moves": rb.opt_max_moves,
                          "patience": rb.opt_patience}  # fmt: skip
                cfg = EvalConfig(name, "two-stage", rb.opt_k, n_users=G.n_users, model=G.reader, seed=seed,
                                 guard="own", params=params)  # fmt: skip
                test.append(GridTask(cfg, "test", "reader"))
    return valid + test


def published_path(runner, cfg: EvalConfig) -> Path:
    """Where ``cfg``'s published summary lives: ``results/<profile>/grid/<dataset>/<summary name>``."""
    _, final = runner.paths(cfg)
    return runner.root / "grid" / cfg.dataset / final.name


def load(runner, cfg: EvalConfig) -> dict | None:
    """The published summary of ``cfg`` under its current key, or ``None`` when it is missing."""
    path = published_path(runner, cfg)
    return json.loads(path.read_text()) if path.is_file() else None


def run_task(runner, task: GridTask) -> Path:
    """Compute ``task`` with the runner (resuming from its records) and publish its summary atomically."""
    result = runner.run(task.cfg)
    return _publish(published_path(runner, task.cfg), result)


def _publish(path: Path, result: dict) -> Path:
    """Write a summary where :func:`load` reads it (atomically; the one format of a published file)."""
    return atomic_write_text(path, json.dumps(result, indent=1, sort_keys=True))


def _measured(root: Path) -> dict[tuple[str, str, int], list[float]]:
    """Seconds per user of every summary on disk under ``root`` (any profile), by (model, method, k)."""
    out: dict[tuple[str, str, int], list[float]] = {}
    for path in root.glob("*/eval/*/*.json"):
        try:
            prov = json.loads(path.read_text())["provenance"]
            out.setdefault((prov.get("model") or "ref", prov["method"], int(prov["k"])), []).append(
                float(prov["seconds_per_user"]) + float(prov.get("null_seconds_per_user") or 0.0)
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def estimate_seconds(tasks: Sequence[GridTask], results_root: Path) -> float:
    """Estimated compute time of ``tasks``: users × the median seconds per user measured by any run of the
    same (model, method, k) under ``results_root`` (else of the same model and k), else
    :data:`DEFAULT_SECONDS` (LLMs scaled by size). Cached users are not subtracted: an upper bound."""
    import numpy as np

    measured = _measured(results_root)
    total = 0.0
    for t in tasks:
        c = t.cfg
        model = c.model if t.kind != "reference" else "ref"
        seen = measured.get((model, c.method, c.k)) or [  # else any method of the same model and k
            x for (m, _, k), xs in measured.items() if m == model and k == c.k for x in xs
        ]
        if seen:
            per_user = float(np.median(seen))
        elif t.kind == "llm":
            per_user = DEFAULT_SECONDS["llm"] * MODEL_SCALE.get(c.model, 2.0) * (1 + c.k / 2)
        else:
            per_user = DEFAULT_SECONDS[t.kind]
        total += per_user * (c.n_users or 1000)
    return total


def plan(runner, tasks: Sequence[GridTask]) -> tuple[list[GridTask], list[GridTask]]:
    """(published, missing) tasks of ``tasks`` under their current keys."""
    done, missing = [], []
    for t in tasks:
        (done if published_path(runner, t.cfg).is_file() else missing).append(t)
    return done, missing


# ----------------------------------------------------------------------------- execution


@dataclass(frozen=True)
class Setup:
    """What builds the Runner of a task (the key of :func:`runner_for`'s per-process cache). Paths are
    strings: they are sent to the workers and name folders on *their* machines."""

    profile: str
    device: str = "auto"
    dtype: str = "auto"
    results_root: str | None = None
    data_dir: str | None = None


_RUNNERS: dict[Setup, object] = {}
_RUN_LOCK = threading.Lock()  # one task at a time per process: a Runner is not shared between threads


def runner_for(setup: Setup):
    """The Runner of ``setup`` in this process, built once, so a worker loads each model once."""
    from lrgd.rec.runner import Runner

    if setup not in _RUNNERS:
        root = None if setup.results_root is None else Path(setup.results_root)
        data = None if setup.data_dir is None else Path(setup.data_dir)
        _RUNNERS[setup] = Runner(
            setup.profile, setup.device, quiet=True, results_root=root, data_dir=data, dtype=setup.dtype
        )
    return _RUNNERS[setup]


def describe(exc: BaseException) -> str:
    """One line for a failed task: an :class:`~lrgd.errors.LRGDError`'s message, else the exception's type,
    message and the ``file:line`` that raised it (never a traceback)."""
    if isinstance(exc, LRGDError):
        text = str(exc)
    else:
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
        text = f"{type(exc).__name__}: {exc}{where}"
    return " ".join(text.split())


def _failure(exc: BaseException) -> dict:
    family = type(exc).__name__ if isinstance(exc, LRGDError) else None
    return {"error": describe(exc), "family": family}


def compute(task: GridTask, setup: Setup, threads: int = 1, lock: bool = False, after: object = None) -> dict:
    """Run ``task`` in this process (a dask worker) → ``{"name": its published file name, "result": its
    summary}``, or :func:`_failure`'s ``{"error": one line, "family": ...}``: an error travels back as a
    value, so no worker logs a traceback.

    ``lock``: load the model under a cluster-wide lock (its first load may convert a named model or train
    a ``trained:`` one; the other workers then read the cache). ``after``: unused; a future passed here
    makes dask run this task after that one (two tasks sharing a record file)."""
    try:
        with _RUN_LOCK:
            import torch

            torch.set_num_threads(threads)
            runner = runner_for(setup)
            if lock and task.cfg.llm and not Path(task.cfg.model).is_dir():  # a folder is loaded as it is
                from distributed import Lock

                with Lock(f"lrgd-model-{task.cfg.model}"):
                    runner.lm(task.cfg.model)
            result = runner.run(task.cfg)
            return {"name": published_path(runner, task.cfg).name, "result": result}
    except Exception as exc:
        return _failure(exc)


def _resolved(device: str, dtype: str) -> dict:
    """``device`` and ``dtype`` as this process resolves ``auto`` (asked of a worker of a remote cluster:
    the dtype enters every LLM key)."""
    try:
        dev = resolve_device(device)
        return {"device": dev, "dtype": resolve_dtype(dtype, dev)}
    except Exception as exc:
        return _failure(exc)


def _mode(scheduler: str | None, workers: int, threads: int) -> tuple[str, str | None]:
    """(``sequential`` | ``local`` | ``remote``, where the tasks run in words)."""
    if not isinstance(workers, int) or workers < 0:
        raise ConfigError(f"--workers must be an integer ≥ 0 (0: run here without dask), got {workers!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"--threads must be an integer ≥ 1 (torch threads per worker), got {threads!r}")
    if scheduler == "sequential" or (scheduler is None and workers == 0):
        return "sequential", "this process"
    address = scheduler or scheduler_address()
    if address is None:
        return "local", f"a local cluster of {workers} worker(s) × {threads} torch thread(s)"
    source = "--scheduler" if scheduler else "LRGD_SCHEDULER"
    if ":" not in address or any(c.isspace() for c in address):
        raise ConfigError(
            f"{source}={address!r} is not a dask scheduler address; give one like tcp://host:8786, "
            "or 'sequential'"
        )
    return "remote", address


def _connect(address: str):
    """A client of the running scheduler at ``address`` (a one-line error when it cannot be reached)."""
    from distributed import Client

    try:
        return Client(address, timeout="20s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach the dask scheduler at {address} ({' '.join(str(exc).split())}); start it with "
            f"`dask scheduler` and one `dask worker {address} --nthreads 1` per device, fix --scheduler / "
            "LRGD_SCHEDULER, or leave both unset for a local cluster"
        ) from None


@contextmanager
def _local_client(workers: int):
    """A ``LocalCluster`` of ``workers`` processes, one task at a time each (torch threads are set per task
    by :func:`compute`), no dashboard, no memory limit (the tasks hold no dask data), quiet logs."""
    import logging

    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
            memory_limit=0, silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster, set_as_default=False) as client,
    ):  # fmt: skip
        yield client


@dataclass
class GridStatus:
    """Where each task's summary is published, and which of them are missing (:func:`grid_status`)."""

    where: str
    paths: dict[GridTask, Path]  # every task that could be located → its published file
    missing: list[GridTask]  # located, not yet published (unique, in task order)
    failed: list[tuple[GridTask, dict]]  # tasks that could not be located → :func:`_failure`
    seconds: float  # :func:`estimate_seconds` of ``missing``

    def lines(self, profile: str) -> list[str]:
        """The plan in words: counts by kind, the estimated compute time of the missing tasks."""
        n = len(self.paths) + len(self.failed)
        by_kind = ", ".join(
            f"{k} {c}" for k in KINDS if (c := sum(t.kind == k for t in self.missing))
        )  # fmt: skip
        out = [
            f"grid {profile}: {n} tasks · {len(self.paths) - len(self.missing)} published · "
            f"{len(self.missing)} missing" + (f" ({by_kind})" if by_kind else ""),
            f"  estimated compute of the missing tasks: {format_seconds(self.seconds)} "
            f"(one worker; measured seconds per user where a run exists) · would run on {self.where}",
        ]
        return out + [f"  cannot locate {t.label}: {f['error']}" for t, f in self.failed]

    def check(self) -> None:
        """Raise one error summing up the tasks that could not be located, if any."""
        if self.failed:
            n = len(self.paths) + len(self.failed)
            raise _summary(self.failed, n, "cannot be located", "nothing ran")


def format_seconds(s: float) -> str:
    """``s`` seconds in words: ``45 s``, ``12 min``, ``3 h 05 min``."""
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _locate(planner, tasks: Sequence[GridTask], where: str) -> GridStatus:
    """Each task's published path (its key) and whether it exists; a task that cannot be keyed (a bad
    condition, missing data or model) fails alone. Two tasks with one path are sent once."""
    paths, failed, missing, sent = {}, [], [], set()
    for t in dict.fromkeys(tasks):
        try:
            paths[t] = published_path(planner, t.cfg)
        except Exception as exc:
            failed.append((t, _failure(exc)))
            continue
        if not paths[t].is_file() and paths[t] not in sent:
            missing.append(t)
            sent.add(paths[t])
    return GridStatus(where, paths, missing, failed, estimate_seconds(missing, planner.root.parent))


class _Session(NamedTuple):
    mode: str  # sequential | local | remote
    setup: Setup  # what the workers build their Runner from
    planner: object  # this process's Runner, which computes the keys (the published paths)
    client: object  # the remote cluster's client; None otherwise (a local cluster starts only if needed)
    where: str  # where the tasks run, in words


@contextmanager
def _session(profile, scheduler, workers, threads, device, dtype, results_root, data_dir):
    """Yield a :class:`_Session`. For a remote cluster the planner runs on cpu with the dtype a worker
    resolves (the dtype is part of every LLM key; the device is not)."""
    mode, where = _mode(scheduler, workers, threads)
    str_or_none = lambda p: None if p is None else str(p)  # noqa: E731
    setup = Setup(get_profile(profile).name, device, dtype, str_or_none(results_root), str_or_none(data_dir))
    if mode != "remote":  # local workers resolve auto as this process does
        yield _Session(mode, setup, runner_for(setup), None, where)
        return
    with _connect(where) as client:
        seen = client.submit(_resolved, device, dtype, pure=False).result()
        if "error" in seen:
            what = f"--device {device} --dtype {dtype}"
            raise ConfigError(f"a worker of {where} refused {what}: {seen['error']}")
        planner = runner_for(replace(setup, device="cpu", dtype=seen["dtype"]))
        yield _Session(mode, setup, planner, client, where)


def grid_status(
    profile: str,
    tasks: Sequence[GridTask],
    scheduler: str | None = None,
    workers: int = 2,
    threads: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    results_root: Path | None = None,
    data_dir: Path | None = None,
) -> GridStatus:
    """What :func:`run_grid` would do with the same arguments, computing nothing (``grid --dry-run``)."""
    with _session(profile, scheduler, workers, threads, device, dtype, results_root, data_dir) as s:
        return _locate(s.planner, tasks, s.where)


# ------------------------------------------------------------------------- trained weights, committed


def weights_files(runner, tasks: Sequence[GridTask]) -> list[Path]:
    """The cache file of each trained model that ``tasks`` run (:func:`lrgd.models.reader.weights_path`;
    its resumable checkpoint is the same name with ``.partial``)."""
    from lrgd.models.reader import weights_path

    out = []
    for name in dict.fromkeys(t.cfg.model for t in tasks if t.kind == "reader"):
        sizes = runner.reader_sizes(name)
        out.append(weights_path(sizes, runner.reader_data(), runner.embedder_fingerprint(sizes.titles)))
    return out


def export_weights(runner, tasks: Sequence[GridTask]) -> list[Path]:
    """Copy the trained models' weights (or training checkpoint) of ``tasks`` from the cache to
    ``<root>/<profile>/models/`` (:func:`lrgd.results.commit_weights`) and return the copies."""
    return [f for path in weights_files(runner, tasks) for f in commit_weights(path, runner.root / "models")]


def import_weights(runner, tasks: Sequence[GridTask]) -> list[Path]:
    """Copy committed weights of ``tasks``' trained models into a cache that has none
    (:func:`lrgd.results.restore_weights`); return the cache files written."""
    out = [restore_weights(path, runner.root / "models") for path in weights_files(runner, tasks)]
    return [p for p in out if p is not None]


def grid_files(
    profile: str,
    tasks: Sequence[GridTask],
    dtype: str = "auto",
    results_root: Path | None = None,
    data_dir: Path | None = None,
) -> tuple[list[Path], list[Path]]:
    """(files to commit, stale published files) of ``tasks`` (``grid --files`` / ``--prune``).

    To commit: every published summary, for each missing task its per-user records so far and its
    saved candidates, and the trained models' weights or training checkpoint (copied from the cache by
    :func:`export_weights`), so that a later session (another clone) resumes the run instead of
    restarting it. Stale: files under ``<root>/<profile>/grid/`` and ``models/`` that no task's current
    key names (a run of an earlier configuration, data, model or code), which nothing reads."""
    with _session(profile, "sequential", 0, 1, "cpu", dtype, results_root, data_dir) as s:
        st = _locate(s.planner, tasks, s.where)
        st.check()
        keep = [p for t, p in st.paths.items() if p.is_file()]
        for t in st.missing:
            keep += [p for p in (s.planner.paths(t.cfg)[0], s.planner.candidates_path(t.cfg)) if p.is_file()]
        weights = export_weights(s.planner, tasks)
        current = set(st.paths.values()) | set(weights)
        stale = [p for p in sorted((s.planner.root / "grid").glob("*/*.json")) if p not in current]
        stale += [p for p in sorted((s.planner.root / "models").glob("*")) if p not in current]
    return list(dict.fromkeys(keep + weights)), stale


def run_grid(
    profile: str,
    tasks: Sequence[GridTask],
    scheduler: str | None = None,
    workers: int = 2,
    threads: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    results_root: Path | None = None,
    data_dir: Path | None = None,
    progress: bool = True,
) -> list[dict]:
    """Compute the missing ``tasks`` and publish them; return every task's published summary, in order.

    Where: ``scheduler`` ``"sequential"`` or ``workers=0`` → this process, without dask; a scheduler address
    (``tcp://host:8786``; else ``$LRGD_SCHEDULER``) → that cluster; otherwise a ``LocalCluster`` of
    ``workers`` processes with torch on ``threads`` threads each (a sequential run keeps this process's
    torch threads). Each worker runs one task at a time. Published tasks are not sent (a
    second run computes nothing), nor is a cluster started when nothing is missing. A failing task is
    reported in one line naming it while the others go on; then one :class:`ConfigError` (or the
    failures' shared family, :class:`DataError` / :class:`ModelError`) sums them up.
    """
    from lrgd.progress import progress as bar

    failures: list[tuple[GridTask, dict]] = []
    first_exc: BaseException | None = None

    def fail(task: GridTask, info: dict) -> None:
        failures.append((task, info))
        _say(f"failed: {task.label}: {info['error']}")

    with _session(profile, scheduler, workers, threads, device, dtype, results_root, data_dir) as s:
        status = _locate(s.planner, tasks, s.where)
        for t, info in status.failed:
            fail(t, info)
        todo = status.missing
        for path in import_weights(s.planner, todo) if todo else []:  # committed weights → this cache
            _say(f"resuming from committed weights: {path.name}")
        if progress:
            _say(status.lines(s.setup.profile)[0] + (f" · running on {s.where}" if todo else ""))
        if todo and s.mode == "sequential":
            for t in bar(todo, f"grid {s.setup.profile}", total=len(todo)) if progress else todo:
                try:
                    run_task(s.planner, t)
                except Exception as exc:
                    first_exc = first_exc or exc
                    fail(t, _failure(exc))
        elif todo:
            with _local_client(workers) if s.client is None else nullcontext(s.client) as client:
                _run_on_cluster(client, s, todo, threads, status.paths, fail, progress)
    if failures:
        raise _summary(failures, len(status.paths) + len(status.failed)) from first_exc
    return [json.loads(status.paths[t].read_text()) for t in tasks]


def _run_on_cluster(client, s: _Session, todo, threads, paths, fail, show) -> None:
    """Send ``todo`` to the cluster and publish each summary as its future completes. Tasks whose keys
    differ only in ``n_users`` share a record file: each runs after the previous one (then reads its
    users from the records instead of computing them twice)."""
    from distributed import as_completed

    from lrgd.progress import progress as bar

    futures, last = {}, {}
    for t in todo:
        records = s.planner.paths(t.cfg)[0]
        fut = client.submit(compute, t, s.setup, threads, True, last.get(records), pure=False)
        futures[fut], last[records] = t, fut
    done = as_completed(futures, loop=client.loop)  # this client (not a process-wide default)
    for fut in bar(done, f"grid {s.setup.profile}", total=len(futures)) if show else done:
        task = futures[fut]
        try:
            out = fut.result()
        except Exception as exc:  # the worker died (out of memory, killed) or the task was cancelled
            out = _failure(exc)
        if "error" in out:
            fail(task, out)
        elif out["name"] != paths[task].name:
            fail(task, {"family": None, "error": (
                f"the worker computed {out['name']} but this process expects {paths[task].name}: the "
                "workers' code, data, models or dtype differ from this machine's; use the same checkout, "
                "data and models on every machine"
            )})  # fmt: skip
        else:
            _publish(paths[task], out["result"])


def _summary(
    failures: list[tuple[GridTask, dict]],
    n: int,
    what: str = "failed",
    rest: str = "the others are published",
) -> LRGDError:
    """One error summing up the failed tasks (their family when they share one, else ConfigError)."""
    from lrgd.errors import DataError, ModelError

    families = {info["family"] for _, info in failures}
    shared = families.pop() if len(families) == 1 else None
    cls = {"DataError": DataError, "ModelError": ModelError}.get(shared, ConfigError)
    task, info = failures[0]
    return cls(
        f"{len(failures)} of {n} grid tasks {what} (each named above; first: {task.label}: {info['error']}); "
        f"{rest}: fix the cause and run the same command again (it computes only the missing tasks)"
    )


def _say(line: str) -> None:
    """One line on stderr that does not break a progress bar."""
    from tqdm.std import tqdm

    tqdm.write(line, file=sys.stderr)

"""The main results grid (chapter 6): dataset × model × method, one :class:`~lrgd.rec.conditions.EvalConfig`
per task, every task independent.

:func:`grid_tasks` lists the tasks of a profile (its ``.grid`` section, :class:`lrgd.config.GridSizes`):

* **test** tasks make the rows of one table per dataset, all on the same first ``n_users`` test users of
  the seeded order and the same saved candidates (so every pair of rows is a paired comparison):
  the LLM selectors per model (k = 0 for zero-shot), the Effect_D selectors, the non-LLM references, and
  the trained reader of chapter 2b at k = 0 and at every (selector, k) of its profile;
* **valid** tasks make the choices, on validation users only: the LLM score variant (chapter 2's
  :meth:`~lrgd.rec.runner.Runner.validation_variant`) and the reader's (selector, k).

A finished task is *published*: its summary (metrics with CIs, per-user ranks, provenance) is copied to
``results/<profile>/grid/<dataset>/<file>``, the runner's summary name, which carries the key of its full
configuration, data fingerprint, model weights and code (:meth:`Runner.key`). ``results/full/grid/`` is
committed, so the book renders the published tables without computing; change anything a number depends
on and its key changes, so the table shows it as missing instead of serving a stale number.

>>> tasks = grid_tasks("ci")  # doctest: +SKIP
>>> runner = Runner("full")  # doctest: +SKIP
>>> done, missing = plan(runner, grid_tasks("full"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lrgd.config import get_profile
from lrgd.rec.conditions import EvalConfig
from lrgd.results import atomic_write_text

__all__ = ["GridTask", "estimate_seconds", "grid_tasks", "load", "plan", "published_path", "run_task"]

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
        for ref in G.references:
            test.append(GridTask(EvalConfig(name, ref, n_users=G.n_users, seed=seed), "test", "reference"))
        if G.reader and name in G.reader_datasets:
            rows = [("zero-shot", 0)] + [(s, k) for s in R.eval_selectors for k in R.eval_ks]
            for method, k in rows:
                for split, n in (("valid", R.n_valid_users), ("test", G.n_users)):
                    cfg = EvalConfig(name, method, k, n_users=n, split=split, model=G.reader, seed=seed,
                                     guard="own")  # fmt: skip
                    (valid if split == "valid" else test).append(GridTask(cfg, split, "reader"))
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
    return atomic_write_text(published_path(runner, task.cfg), json.dumps(result, indent=1, sort_keys=True))


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

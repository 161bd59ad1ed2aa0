"""The two-stage optimiser on real data, through the runner (chapter 4 §4.8; **our reconstruction**).

One **global** demonstration set — k demonstrations shown to every user — is chosen from a pool of M
candidate demonstrations and written to a file that the runner's ``optimized`` selector reads
(:mod:`lrgd.robust.selectors`), so every model the runner knows (the trained reader, SmolLM2, ...) is
optimised and evaluated through the same code:

* **pool** (:func:`draw_pool`): training windows (pool user, cut) of the :class:`~lrgd.rec.select.DemoPool`,
  half anchored at popular items (for each of the most popular training items, one seeded occurrence of a
  transition right after it, so that the query items most users share are covered) and half seeded
  uniform transitions. Sources never come from the validation users or the first ``n_test_users`` test
  users, so the leakage guard seldom has to drop one.
* **users**: the first ``n_valid_users`` eligible users of the runner's ``valid`` split (their target is the
  leave-last-two-out validation item) that are not among the first ``n_test_users`` test users; the first
  half trains stage 2, the second half is the *held-out validation* split of the collapse guards. Test
  users (``test`` split) are only scored, never used to choose.
* **objective** (:class:`RunnerObjective`): ``set_loss(u, S)`` = −log softmax of user u's target among its
  candidates under the model's scores, with the demonstrations S (in order) in u's validation prompt —
  exactly the prompt the runner builds for the ``optimized`` selector (tested). Memoised per (user, set);
  the reader scores all prompts of one call in batches. **Leakage guard**: a demonstration that the
  runner's guard refuses for a user (their own sequence, or — ``guard="held-out"`` — one showing their
  held-out items) is *dropped* from that user's prompt (the user sees fewer than k; counted in
  ``guarded``), in the objective and in the selector alike.
* **stage 1** (:func:`stage1_gain`): the single-demonstration gain L_u(∅) − L_u({d}) for every (d, u) —
  exact, M·N + N prompt passes (for the reader, batched forwards; Effect_D would cost N forward/backward
  passes plus M·N short ones on the reader because its tags are per prompt, so it saves nothing there).
  Then the global top-k (:func:`lrgd.robust.optimise.stage1`).
* **stage 2**: :func:`lrgd.robust.optimise.refine` with max_moves sampled swaps per iteration, early
  stopping on the held-out split and keep-best (the *collapse guard*; off: ``collapse_guard=False``).

:func:`optimize` runs both stages and calls ``on_state`` with a JSON-ready state after stage 1 and after
every stage-2 iteration; passed back, it resumes and gives the same result (the memo travels in the
state, so every later call batches the same prompts as the uninterrupted run).
"""

from __future__ import annotations

import json
import math
import os
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lrgd.errors import ConfigError
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.rank import rank_order, target_rank
from lrgd.rec.select import DemoPool, Selection
from lrgd.results import content_key, write_json
from lrgd.robust import optimise as opt

FORMAT = "lrgd.optimized-demos/1"
_BATCH = 256  # reader prompts per forward


@dataclass(frozen=True)
class OptimizeSpec:
    """Everything that determines an optimised set (it enters the state file and the demonstration file)."""

    dataset: str
    model: str = "trained:reader-anon"
    k: int = 4
    n_pool: int = 40
    n_valid_users: int = 60
    n_test_users: int = 200  # the first test users of the runner's order: never validation users or sources
    max_iters: int = 6
    max_moves: int | None = 48  # swaps sampled per iteration (None: all k·(M − k))
    patience: int = 1
    collapse_guard: bool = True  # early stopping + keep-best on the held-out validation split
    seed: int = 0
    guard: str = "own"  # the leakage guard (lrgd.rec.select.GUARDS)
    history_len: int = 10
    n_candidates: int = 20
    variant: str = "summed"  # the LLM score variant the loss reads (the reader has one: score)

    def validate(self) -> OptimizeSpec:
        for name, low in (
            ("k", 1),
            ("n_pool", 2),
            ("n_valid_users", 2),
            ("n_test_users", 0),
            ("max_iters", 0),
            ("patience", 1),
            ("history_len", 1),
            ("n_candidates", 2),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or v < low:
                raise ConfigError(f"--{name.replace('_', '-')} must be an integer ≥ {low}, got {v!r}")
        if self.k >= self.n_pool:
            raise ConfigError(f"--k {self.k} must be smaller than --pool {self.n_pool}")
        if self.max_moves is not None and self.max_moves < 1:
            raise ConfigError(f"--max-moves must be ≥ 1, got {self.max_moves}")
        EvalConfig(
            self.dataset,
            "random",
            self.k,
            model=self.model,
            guard=self.guard,
            history_len=self.history_len,
            n_candidates=self.n_candidates,
            seed=self.seed,
        ).validate()
        return self

    def cfg(self, split: str, method: str = "zero-shot", k: int = 0, **params) -> EvalConfig:
        """The runner condition of this spec's prompts on ``split``."""
        return EvalConfig(
            self.dataset,
            method,
            k,
            split=split,
            model=self.model,
            guard=self.guard,
            history_len=self.history_len,
            n_candidates=self.n_candidates,
            seed=self.seed,
            params=params,
            n_users=None,
        )


# ----------------------------------------------------------------------------- users and the pool


def split_users(runner, spec: OptimizeSpec) -> tuple[list[str], list[str], list[str]]:
    """(train-validation, held-out validation, test) users: validation users are the first
    ``n_valid_users`` of the valid order outside the first ``n_test_users`` test users."""
    test = runner.eligible_users(spec.dataset, "test", spec.seed)[0][: spec.n_test_users]
    taken = set(test)
    valid = [u for u in runner.eligible_users(spec.dataset, "valid", spec.seed)[0] if u not in taken]
    if len(valid) < spec.n_valid_users:
        raise ConfigError(
            f"{spec.dataset}: only {len(valid)} validation users outside the test users; lower --valid-users"
        )
    valid = valid[: spec.n_valid_users]
    half = len(valid) // 2
    return valid[:half], valid[half:], test


def draw_pool(pool: DemoPool, m: int, seed: int, exclude: Sequence[str] = ()) -> list[tuple[str, int]]:
    """M candidate sources (pool user, cut): ⌈M/2⌉ anchored at the most popular training items (one
    seeded transition right after each), the rest seeded uniform transitions; none from ``exclude``."""
    excl = set(exclude)
    train = pool.split.train
    users = [u for u in sorted(train) if u not in excl]
    occ: dict[str, list[tuple[str, int]]] = {}
    for u in users:
        for cut in range(1, len(train[u])):
            occ.setdefault(train[u][cut - 1], []).append((u, cut))
    out: list[tuple[str, int]] = []
    seen: set[tuple[str, int]] = set()

    def add(src: tuple[str, int]) -> None:
        if src not in seen and pool.make(*src) is not None:
            seen.add(src)
            out.append(src)

    pop = pool.popularity
    for item in sorted(occ, key=lambda i: (-pop[i], i)):
        if len(out) >= math.ceil(m / 2):
            break
        rng = np.random.default_rng([seed, 31, zlib.crc32(item.encode())])
        add(occ[item][int(rng.integers(len(occ[item])))])
    every = [src for i in sorted(occ) for src in occ[i]]
    for j in np.random.default_rng([seed, 32]).permutation(len(every)):
        if len(out) >= m:
            break
        add(every[j])
    if len(out) < m:
        raise ConfigError(f"{pool.ds.name}: only {len(out)} candidate demonstrations; lower --pool (got {m})")
    return out


def selection_for(
    pool: DemoPool, user: str, demos: Sequence[tuple[tuple[str, int], tuple[str, ...]]]
) -> Selection:
    """The demonstrations ``demos`` [(source, item ids)] for ``user`` in order, those the leakage guard
    refuses dropped (counted in ``guarded``). A source that no longer shows its item ids (another
    dataset version or history length) is a :class:`ConfigError`."""
    held = pool.held_out(user)
    shown, sources, guarded = [], [], 0
    for src, items in demos:
        built = pool.make(*src)
        if built is None or tuple(built[1]) != tuple(items):
            raise ConfigError(
                f"demonstration {list(src)} does not show {list(items)} in {pool.ds.name} with history "
                f"{pool.h}; rebuild the file with `python -m lrgd optimize` on this data"
            )
        if not pool.allowed(user, src[0], built[1], held):
            guarded += 1
            continue
        shown.append(built[0])
        sources.append(tuple(src))
    return Selection(tuple(shown), tuple(sources), guarded)


# ----------------------------------------------------------------------------- the objective


class _FixedSelection:
    """The runner with ``select`` answering one fixed selection (so :meth:`Runner.user_prompt` builds the
    exact prompt of that selection); every other attribute is the runner's."""

    def __init__(self, runner, sel: Selection) -> None:
        self._runner, self._sel = runner, sel

    def __getattr__(self, name: str):
        return getattr(self._runner, name)

    def select(self, cfg, user, history) -> Selection:
        return self._sel


def _rank_loss(scores: np.ndarray, label: int) -> float:
    """−log softmax(scores)[label] in float64."""
    s = np.asarray(scores, dtype=np.float64)
    top = s.max()
    return float(top + math.log(np.exp(s - top).sum()) - s[label])


class RunnerObjective:
    """:class:`lrgd.robust.optimise.SetObjective` over the runner's prompts of ``users`` on ``split``.

    ``sources`` [M] are the pool's demonstrations (pool user, cut); a set is a row of pool ids. Counters:
    ``passes`` prompts scored (memo misses), ``guarded`` demonstrations dropped by the leakage guard.
    """

    def __init__(self, runner, spec: OptimizeSpec, split: str, users: Sequence[str], sources) -> None:
        self.runner, self.spec, self.users = runner, spec, list(users)
        self.cfg = spec.cfg(split)
        self.pool = runner.pool(self.cfg)
        self.demos = [(tuple(s), tuple(self.pool.make(*s)[1])) for s in sources]
        self.n_pool = len(self.demos)
        self.memo: dict[tuple[int, tuple[int, ...]], float] = {}
        self.passes = self.guarded = 0
        self._cands = runner.candidates(self.cfg, self.users) if self.users else {}

    def selection(self, u: int, ids: Sequence[int]) -> Selection:
        """User ``u``'s selection of pool ids ``ids`` (guard applied)."""
        return selection_for(self.pool, self.users[u], [self.demos[int(i)] for i in ids])

    def set_loss(self, users: np.ndarray, sets: np.ndarray) -> np.ndarray:
        """users [n] (indices into ``self.users``), sets [n, k] (k may be 0) → rank loss [n]."""
        keys = [
            (int(u), tuple(int(i) for i in s))
            for u, s in zip(users, np.asarray(sets).reshape(len(users), -1))
        ]
        todo = list(dict.fromkeys(k for k in keys if k not in self.memo))
        if todo:
            for key, loss in zip(todo, self._losses(todo), strict=True):
                self.memo[key] = loss
            self.passes += len(todo)
        return np.array([self.memo[k] for k in keys])

    def scores(self, u: int, sel: Selection) -> tuple[list[str], np.ndarray, int]:
        """(candidates in scoring order, scores [C], target column) of user ``u`` with ``sel``."""
        return self._score_batch([(u, sel)])[0]

    def _losses(self, keys: list[tuple[int, tuple[int, ...]]]) -> list[float]:
        sels = [(u, self.selection(u, ids)) for u, ids in keys]
        self.guarded += sum(s.guarded for _, s in sels)
        return [_rank_loss(s, label) for _, s, label in self._score_batch(sels)]

    def _score_batch(self, sels: list[tuple[int, Selection]]) -> list[tuple[list[str], np.ndarray, int]]:
        from lrgd.rec.runner import is_trained

        if is_trained(self.spec.model):
            return self._reader_scores(sels)
        out = []
        for u, sel in sels:
            user = self.users[u]
            up = type(self.runner).user_prompt(
                _FixedSelection(self.runner, sel), self.cfg, user, self._cands[user]
            )
            s = self.runner.score(self.cfg, up)[self.spec.variant]
            out.append((list(up.candidates), np.asarray(s, dtype=np.float64), up.candidates.index(up.target)))
        return out

    def _reader_scores(self, sels):
        """The runner's ``evaluate_trained`` prompts (same tags, same encoding), batched by length."""
        import torch

        from lrgd.models.reader import collate, encode_query

        r, cfg = self.runner, self.cfg
        sizes = r.reader_sizes(cfg.model)
        model, cat = r.trained(cfg.model).model, r.catalogue(cfg.dataset, sizes.titles)
        enc, meta = [], []
        for u, sel in sels:
            user = self.users[u]
            hist, target = r.target(cfg, user)
            cand = r.ordered(cfg, user, self._cands[user])
            enc.append(encode_query(cat, r.demo_ids(cfg, sel), hist, cand, sizes, r.tag_seed(cfg, user)))
            meta.append((cand, cand.index(target)))
        out: list = [None] * len(enc)
        by_len: dict[int, list[int]] = {}
        for j, e in enumerate(enc):
            by_len.setdefault(len(e[0]), []).append(j)
        with torch.no_grad():
            for idx in by_len.values():
                for b in range(0, len(idx), _BATCH):
                    part = idx[b : b + _BATCH]
                    s = (
                        model(cat, collate([enc[j] for j in part], [-1] * len(part)))
                        .numpy()
                        .astype(np.float64)
                    )
                    for row, j in enumerate(part):
                        out[j] = (meta[j][0], s[row], meta[j][1])
        return out

    def memo_state(self) -> list:
        return [[u, list(s), v] for (u, s), v in self.memo.items()]

    def load_memo(self, rows: list) -> None:
        self.memo = {(int(u), tuple(int(i) for i in s)): float(v) for u, s, v in rows}


def stage1_gain(objective: RunnerObjective, users: Sequence[int], ids: Sequence[int] | None = None):
    """S [M, N] (np.ndarray): L_u(∅) − L_u({d}) for every pool demonstration d (or only the pool ids
    ``ids``, in that order) and user u (M·N + N passes)."""
    users = np.asarray(users, dtype=np.int64)
    ids = np.arange(objective.n_pool) if ids is None else np.asarray(ids, dtype=np.int64)
    n = len(users)
    zero = objective.set_loss(users, np.zeros((n, 0), dtype=np.int64))
    one = objective.set_loss(np.tile(users, len(ids)), np.repeat(ids, n)[:, None])
    return zero[None, :] - one.reshape(len(ids), n)


def ranks_and_top10(objective: RunnerObjective, sels: Sequence[Selection]) -> dict[str, list]:
    """Per user of ``objective`` [n], with that user's selection ``sels[u]``: the target's rank among the
    candidates and the top-10 candidates (the runner's seeded tie order)."""
    ranks, tops = [], []
    seed = objective.cfg.seed
    for u, sel in enumerate(sels):
        user = objective.users[u]
        cand, s, label = objective.scores(u, sel)
        ranks.append(target_rank(s, cand, cand[label], user, seed))
        tops.append([cand[j] for j in rank_order(s, cand, user, seed)[:10]])
    return {"ranks": ranks, "top10": tops}


# ----------------------------------------------------------------------------- running both stages


@dataclass
class Optimized:
    """An optimisation: the stage-1 set, the stage-2 search, and what it cost."""

    spec: OptimizeSpec
    sources: list[tuple[str, int]]
    train: list[str]
    holdout: list[str]
    scores: np.ndarray  # [M, N_train] stage-1 gains on the train-validation users
    start: np.ndarray  # [k] the stage-1 set
    search: opt.SearchResult
    passes: int  # prompts scored in total (stage 1 + stage 2)
    stage1_passes: int
    guarded: int
    objective: RunnerObjective | None = None  # the validation objective (its memo), for a second run


def optimize(
    runner,
    spec: OptimizeSpec,
    state: dict | None = None,
    on_state: Callable[[dict], None] | None = None,
    verbose: bool = False,
    objective: RunnerObjective | None = None,
) -> Optimized:
    """Stage 1 then stage 2 on the validation users; resumable from ``state`` (see the module docstring).

    ``objective``: reuse another run's objective (its memo; same data, model and pool) — e.g. the
    unguarded run after the guarded one, with ``state`` holding that run's ``sources`` and ``stage1``."""
    spec.validate()
    train, hold, test = split_users(runner, spec)
    pool = runner.pool(spec.cfg("valid"))
    state = dict(state or {})
    if "sources" not in state:
        state["sources"] = [list(s) for s in draw_pool(pool, spec.n_pool, spec.seed, [*train, *hold, *test])]
    sources = [tuple(s) for s in state["sources"]]
    if objective is None:
        obj = RunnerObjective(runner, spec, "valid", [*train, *hold], sources)
        obj.load_memo(state.get("memo", []))
        obj.passes, obj.guarded = state.get("passes", 0), state.get("guarded", 0)
    else:
        obj = objective
    tr, ho = np.arange(len(train)), np.arange(len(train), len(train) + len(hold))
    if "stage1" not in state:
        state["stage1"] = stage1_gain(obj, tr).tolist()
        state["stage1_passes"] = obj.passes
        _emit(state, obj, on_state)
    scores = np.asarray(state["stage1"], dtype=np.float64)
    start = opt.stage1(scores, spec.k, "global")

    def save(search_state: dict) -> None:
        state["search"] = search_state
        _emit(state, obj, on_state)

    guard = spec.collapse_guard
    search = opt.refine(
        obj,
        start,
        tr,
        ho,
        max_iters=spec.max_iters,
        max_moves=spec.max_moves,
        seed=spec.seed,
        patience=spec.patience if guard else None,
        keep_best=guard,
        verbose=verbose,
        state=state.get("search"),
        on_iteration=save,
    )
    return Optimized(spec, sources, train, hold, scores, start, search, obj.passes, state["stage1_passes"],
                     obj.guarded, obj)  # fmt: skip


def optimise_ident(runner, spec: OptimizeSpec) -> dict:
    """What a saved state or demonstration file of ``spec`` must match: the spec, the profile, the data,
    the weights and the code (the state's memo holds the model's losses, so their code is part of it)."""
    from lrgd.results import code_hash

    return {
        "spec": asdict(spec),
        "profile": runner.profile.name,
        "data": runner.data(spec.dataset).fingerprint,
        "weights": runner.model_source(spec.model)[1],
        "code": code_hash(
            "lrgd.robust.optimise", "lrgd.robust.runner_objective", *runner.code_modules(spec.cfg("valid"))
        ),
    }


def optimise_to_file(
    runner, spec: OptimizeSpec, out: str | Path, restart: bool = False, verbose: bool = False
) -> tuple[Optimized, dict]:
    """Run (or resume) :func:`optimize` and write its demonstration file ``out`` → (result, document).

    The state goes atomically to ``<out>.state.json`` after stage 1 and after every stage-2 iteration; a
    state of the same :func:`optimise_ident` is resumed (identical result), one of another is refused in
    one line unless ``restart``."""
    ident = optimise_ident(runner, spec)
    path = Path(str(out) + ".state.json")
    state = None
    if path.is_file() and not restart:
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{path}: unreadable state file; rerun with --restart to start over") from None
        if saved.get("ident") != ident:
            diff = sorted(k for k in ident if saved.get("ident", {}).get(k) != ident[k])
            raise ConfigError(
                f"{path} was written by other arguments ({', '.join(diff)} differ); rerun with the same "
                "arguments to resume, or add --restart to start over"
            )
        state = saved["state"]
        it = state.get("search", {}).get("iteration", 0)
        print(f"resuming from {path} (stage 2 iteration {it})", file=sys.stderr)
    save = lambda st: write_json(path, {"ident": ident, "state": st})  # noqa: E731
    res = optimize(runner, spec, state, on_state=save, verbose=verbose)
    method = "two-stage" if spec.collapse_guard else "two-stage-unguarded"
    chosen = [res.sources[int(i)] for i in res.search.best]
    doc = demos_document(runner, spec, chosen, method, search_summary(res))
    write_demos(Path(out), doc)
    return res, doc


def optimised_document(runner, spec: OptimizeSpec) -> dict:
    """The demonstration file of ``spec`` under ``<results>/<profile>/optimized/<dataset>/``, named by its
    :func:`optimise_ident`: read when it exists, else optimised (resuming a stopped run) and written."""
    model = Path(spec.model).name.replace(":", "-")
    method = "two-stage" if spec.collapse_guard else "two-stage-unguarded"
    name = f"{method}-{model}-k{spec.k}-{content_key(optimise_ident(runner, spec), 12)}"
    out = runner.root / "optimized" / spec.dataset / f"{name}.json"
    if out.is_file():
        return read_demos(out)
    doc = optimise_to_file(runner, spec, out)[1]
    Path(str(out) + ".state.json").unlink(missing_ok=True)  # the file is written: its state is spent
    return doc


def _emit(state: dict, obj: RunnerObjective, on_state) -> None:
    state["memo"], state["passes"], state["guarded"] = obj.memo_state(), obj.passes, obj.guarded
    if on_state is not None:
        on_state(state)


# ----------------------------------------------------------------------------- the demonstration file


def demos_document(runner, spec: OptimizeSpec, sources: Sequence[tuple[str, int]], method: str,
                   extra: dict | None = None) -> dict:  # fmt: skip
    """The file of the ``optimized`` selector for the demonstrations ``sources`` [(pool user, cut)] in
    order: each with its item ids and titles, the spec, data and weights it was chosen with, ``extra``
    (e.g. :func:`search_summary`) and a sha256 of all of it."""
    st = runner.data(spec.dataset)
    pool = runner.pool(spec.cfg("valid"))
    demos = []
    for src in sources:
        items = pool.make(*src)[1]
        titles = [st.ds.items[x].title for x in items]
        demos.append({"source": list(src), "items": list(items), "titles": titles})
    doc = {
        "format": FORMAT, "dataset": spec.dataset, "model": spec.model, "k": len(demos),
        "history_len": spec.history_len, "method": method, "demos": demos, "config": asdict(spec),
        "data_fingerprint": st.fingerprint, "weights": runner.model_source(spec.model)[1], **(extra or {}),
    }  # fmt: skip
    doc["sha256"] = content_key({k: v for k, v in doc.items() if k != "sha256"}, n=64)
    return doc


def search_summary(res: Optimized) -> dict:
    """What a demonstration file records about the search that chose it."""
    s = res.search
    search = {"train_loss": s.train_loss.tolist(), "holdout_loss": s.holdout_loss.tolist(),
              "evals": s.evals.tolist(), "best_iter": s.best_iter, "stopped_by": s.stopped_by,
              "passes": res.passes, "stage1_passes": res.stage1_passes, "guarded": res.guarded}  # fmt: skip
    return {"search": search}


def write_demos(path: Path, doc: dict) -> Path:
    """Write a demonstration file atomically."""
    return write_json(Path(path), doc)


_LOADED: dict[tuple[str, int, int], dict] = {}


def read_demos(path: str | Path) -> dict:
    """A demonstration file, checked (format, fields, content hash); one-line :class:`ConfigError` naming
    the file and the fix otherwise. Cached per (path, size, mtime)."""
    fix = "write it with `python -m lrgd optimize --out FILE` and pass that FILE to --demos"
    if not str(path):
        raise ConfigError(f"--demos is required for the optimized selector; {fix}")
    p = Path(path)
    try:
        stat = os.stat(p)
        key = (str(p.resolve()), stat.st_size, stat.st_mtime_ns)
        if key in _LOADED:
            return _LOADED[key]
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--demos {p}: cannot read it ({type(exc).__name__}); {fix}") from None
    need = ("format", "dataset", "model", "k", "history_len", "demos", "sha256")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or any(n not in doc for n in need):
        raise ConfigError(f"--demos {p}: not a demonstration file of format {FORMAT}; {fix}")
    if doc["sha256"] != content_key({k: v for k, v in doc.items() if k != "sha256"}, n=64):
        raise ConfigError(f"--demos {p}: its content does not match its sha256 (edited by hand?); {fix}")
    ok = (
        isinstance(doc["demos"], list)
        and len(doc["demos"]) == doc["k"]
        and all(
            isinstance(d, dict) and len(d.get("source", ())) == 2 and d.get("items") for d in doc["demos"]
        )
    )
    if not ok:
        raise ConfigError(f"--demos {p}: its demonstrations are malformed; {fix}")
    _LOADED[key] = doc
    return doc


def file_demos(doc: dict) -> list[tuple[tuple[str, int], tuple[str, ...]]]:
    """A file's demonstrations as [(source, item ids)] (what :func:`selection_for` takes)."""
    return [((str(d["source"][0]), int(d["source"][1])), tuple(map(str, d["items"]))) for d in doc["demos"]]

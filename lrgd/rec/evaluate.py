"""Metrics, bootstrap confidence intervals and the resumable evaluation runner.

Metrics of one user from the 1-based rank ``r`` of the held-out item among ``N`` candidates:
``HR@k = [r ≤ k]``, ``NDCG@k = [r ≤ k] / log2(r + 1)`` (one relevant item, so the ideal DCG is 1) and
``MRR = 1 / r``. Means get percentile-bootstrap 95% CIs over users; two methods on the same users get a
*paired* bootstrap of their difference.

The runner (:class:`Runner`, also behind ``python -m lrgd evaluate``) evaluates one :class:`EvalConfig`:
it samples users and candidates (seeded; candidates saved once and read back, so every method ranks
identical lists), builds prompts, scores, and appends **one JSON line per user** to
``results/<profile>/partial/<dataset>/<name>-<key>.jsonl`` as soon as the user is done. ``key`` hashes the
configuration (except the number of users), the data and the model, so a re-run — after an
interruption, or nbval's second execution — reads the users already done and computes only the rest.
When all users are done the summary is written atomically to ``results/<profile>/eval/<dataset>/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from lrgd.config import EvalSizes, get_profile, results_dir
from lrgd.errors import ConfigError, DataError
from lrgd.rec.data import DATASETS, Dataset, Split, leave_one_out, load_dataset, sample_candidates
from lrgd.rec.references import REFERENCES, References
from lrgd.rec.select import EFFECT_SELECTORS, SELECTORS
from lrgd.results import write_json

METRICS = ("HR@1", "HR@5", "HR@10", "NDCG@5", "NDCG@10", "MRR")
METHODS = SELECTORS + REFERENCES
SPLITS = ("test", "valid")
ORDERS = ("sampled", "reversed", "shuffled")
MODES = ("score", "generate")
#: bump when scoring or prompt code changes what a per-user record would contain
RECORD_VERSION = 2


# ----------------------------------------------------------------------------- metrics


def rank_metrics(rank: int) -> dict[str, float]:
    """All :data:`METRICS` for one user whose held-out item has 1-based ``rank``."""
    if rank < 1:
        raise ValueError(f"rank must be ≥ 1, got {rank}")
    out = {}
    for k in (1, 5, 10):
        out[f"HR@{k}"] = float(rank <= k)
    for k in (5, 10):
        out[f"NDCG@{k}"] = 1.0 / np.log2(rank + 1) if rank <= k else 0.0
    out["MRR"] = 1.0 / rank
    return out


def per_user_metrics(ranks: Sequence[int]) -> dict[str, np.ndarray]:
    """Metric name → per-user values [n]."""
    rows = [rank_metrics(int(r)) for r in ranks]
    return {m: np.array([r[m] for r in rows], dtype=float) for m in METRICS}


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap 95% CI (resampling users with replacement)."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    boot = x[idx].mean(1)
    return float(x.mean()), float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))


def paired_bootstrap(
    a: Sequence[float], b: Sequence[float], n_boot: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Mean of ``a - b`` over the same users, its 95% CI, and a two-sided bootstrap p-value."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired bootstrap needs the same users: {a.shape} vs {b.shape}")
    d = a - b
    idx = np.random.default_rng(seed).integers(0, len(d), size=(n_boot, len(d)))
    boot = d[idx].mean(1)
    p = 2 * min((boot <= 0).mean(), (boot >= 0).mean())
    return {
        "diff": float(d.mean()),
        "lo": float(np.quantile(boot, 0.025)),
        "hi": float(np.quantile(boot, 0.975)),
        "p": float(min(1.0, p)),
    }


def summarize(ranks: Sequence[int], n_boot: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """Metric → {mean, lo, hi}."""
    per = per_user_metrics(ranks)
    return {m: dict(zip(("mean", "lo", "hi"), bootstrap_ci(v, n_boot, seed))) for m, v in per.items()}


# ----------------------------------------------------------------------------- presets and configs


def get_preset(profile: str | None = None) -> EvalSizes:
    """Chapter 2's section of ``profile`` (``ci`` | ``full`` | ``gpu``): ``get_profile(profile).eval``."""
    return get_profile(profile).eval


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation condition. Everything that changes a per-user record is a field here."""

    dataset: str
    method: str
    k: int = 0
    n_users: int | None = 20  # None: every eligible user
    split: str = "test"
    model: str = "smollm2-135m"
    n_candidates: int = 20
    history_len: int = 10
    seed: int = 0
    list_candidates: bool = False  # list the candidates inside the prompt (a variant, not the default)
    order: str = "sampled"  # order in which candidates are listed/scored
    mode: str = "score"  # score: log-likelihood of each title; generate: the model writes a ranked list
    similarity_pool: int = 2000
    max_prompt_tokens: int | None = None  # None: the model's context window
    max_new_tokens: int = 96  # generate mode
    effect_pool: int = 30  # effect selectors: candidate demonstrations ranked by Effect_D
    effect_users: int = 20  # effect-global: validation users whose Effect_D is averaged

    @property
    def llm(self) -> bool:
        return self.method in SELECTORS

    def validate(self) -> EvalConfig:
        """Raise :class:`ConfigError` naming the bad field and the valid choices."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.method not in METHODS:
            raise ConfigError(
                f"unknown method {self.method!r}; choose an LLM demonstration selector "
                f"({', '.join(SELECTORS)}) or a non-LLM reference ({', '.join(REFERENCES)})"
            )
        if self.k < 0:
            raise ConfigError(f"k (demonstrations) must be ≥ 0, got {self.k}")
        if self.k > 0 and self.method == "zero-shot":
            raise ConfigError(f"method 'zero-shot' uses no demonstrations; got k={self.k}. Use --k 0")
        if self.k > 0 and not self.llm:
            raise ConfigError(f"{self.method} is not an LLM method and takes no demonstrations; use --k 0")
        if self.k == 0 and self.llm and self.method != "zero-shot":
            raise ConfigError(f"method {self.method!r} with k=0 is zero-shot; use --method zero-shot")
        for name, value, allowed in (
            ("split", self.split, SPLITS),
            ("order", self.order, ORDERS),
            ("mode", self.mode, MODES),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.n_users is not None and self.n_users < 1:
            raise ConfigError(f"--users must be ≥ 1, got {self.n_users}")
        if self.effect_pool < 1 or self.effect_users < 1:
            raise ConfigError(
                f"--effect-pool and --effect-users must be ≥ 1, "
                f"got {self.effect_pool} and {self.effect_users}"
            )
        if self.n_candidates < 2:
            raise ConfigError(f"need at least 2 candidates, got {self.n_candidates}")
        if self.history_len < 1:
            raise ConfigError(f"history length must be ≥ 1, got {self.history_len}")
        if not self.llm and (self.list_candidates or self.mode != "score"):
            raise ConfigError(
                f"{self.method} is a non-LLM reference; list_candidates/generate apply to LLM methods"
            )
        return self

    @property
    def name(self) -> str:
        """File stem, e.g. ``test-similarity-k2`` or ``test-zero-shot-k0-listed-reversed-gen``."""
        parts = [self.split, self.method, f"k{self.k}"]
        if self.list_candidates:
            parts.append("listed")
        if self.order != "sampled":
            parts.append(self.order)
        if self.mode == "generate":
            parts.append("gen")
        return "-".join(parts)


# ----------------------------------------------------------------------------- records on disk


def _read_records(path: Path) -> list[dict]:
    """Complete JSON lines of a partial file; a torn last line (interrupted write) is dropped and the
    file rewritten without it."""
    if not path.is_file():
        return []
    raw = path.read_text(encoding="utf-8")
    lines = raw.split("\n")
    good, bad = [], False
    for i, line in enumerate(lines):
        if not line:
            continue
        try:
            if i == len(lines) - 1:  # no trailing newline: the write did not finish
                raise ValueError
            good.append(json.loads(line))
        except ValueError:
            bad = True
            break
    if bad:
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good), encoding="utf-8")
        os.replace(tmp, path)
    return good


def _append_record(path: Path, record: dict) -> None:
    """Append one user's record as a single write of one complete line, flushed to disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def data_fingerprint(ds: Dataset) -> str:
    """sha256 (16 hex) of the sequences and titles: a changed data file changes every cache key."""
    h = hashlib.sha256(ds.name.encode())
    for u, s in ds.sequences.items():
        h.update(f"{u}:{' '.join(s)}\n".encode())
    for i, it in ds.items.items():
        h.update(f"{i}\t{it.title}\t{int(it.has_title)}\n".encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- the runner


@dataclass
class _DatasetState:
    ds: Dataset
    split: Split
    fingerprint: str
    pools: dict = field(default_factory=dict)
    references: References | None = None


class Runner:
    """Evaluates :class:`EvalConfig` s; holds the model, datasets and caches shared between them.

    >>> runner = Runner(profile="ci")  # doctest: +SKIP
    >>> res = runner.run(EvalConfig("amazon-games", "similarity", k=2, n_users=20))
    >>> res["metrics"]["pmi"]["NDCG@10"]
    {'mean': ..., 'lo': ..., 'hi': ...}
    """

    def __init__(
        self,
        profile: str = "ci",
        device: str = "auto",
        quiet: bool = False,
        results_root: Path | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.profile = get_profile(profile).name
        self.preset = get_profile(profile).eval
        self.device = device
        self.quiet = quiet
        self.root = (
            Path(results_root) / self.profile if results_root is not None else results_dir(self.profile)
        )
        self.data_dir = data_dir
        self._data: dict[str, _DatasetState] = {}
        self._models: dict = {}
        self._embedder = None
        # Keyed by the *title*, not the item id: ids repeat across datasets (Toys, Games, ml-100k).
        # (model, title) → summed log-prob after the null prompt
        self._null: dict[tuple[str, str], float] = {}
        self._token_cache: dict[tuple[str, str, str], list[int]] = {}  # (model, sep, title) → token ids
        self._rankers: dict[tuple, object] = {}  # Effect_D rankers, per (dataset, model, h, seed, M)
        self._global: dict[tuple, object] = {}  # their global rankings, per ranker key and effect_users

    # --------------------------------------------------------------------------- shared state

    def data(self, name: str) -> _DatasetState:
        if name not in self._data:
            ds = load_dataset(name, self.data_dir)
            self._data[name] = _DatasetState(ds, leave_one_out(ds), data_fingerprint(ds))
        return self._data[name]

    def lm(self, name: str):
        if name not in self._models:
            import importlib

            # lrgd.llm first: it filters tqdm's widget warning before transformers is imported
            from lrgd.llm import load_model

            importlib.import_module("transformers.utils.logging").set_verbosity_error()
            self._models[name] = load_model(name, self.device)
        return self._models[name]

    def model_source(self, name: str) -> tuple[str, str]:
        """(source file, sha256) of a model without loading it: a converted folder records its GGUF's
        hash; a plain HF folder is identified by its config and weight-file sizes."""
        from lrgd.llm import model_folder

        folder = model_folder(name)
        src = folder / "lrgd_source.json"
        if src.is_file():
            meta = json.loads(src.read_text())
            return meta["source_file"], meta["sha256"]
        h = hashlib.sha256((folder / "config.json").read_bytes())
        for f in sorted(folder.glob("*.safetensors")):
            h.update(f"{f.name}:{f.stat().st_size}".encode())
        return "config.json", h.hexdigest()

    def model_id(self, name: str) -> str:
        return self.model_source(name)[1][:16]

    def embedder(self):
        if self._embedder is None:
            from lrgd.rec.embed import Embedder

            self._embedder = Embedder("cpu" if self.device == "auto" else self.device)
        return self._embedder

    def pool(self, cfg: EvalConfig):
        from lrgd.rec.select import DemoPool

        st = self.data(cfg.dataset)
        key = (cfg.history_len, cfg.seed, cfg.similarity_pool)
        if key not in st.pools:
            emb = self.embedder() if cfg.method == "similarity" else None
            st.pools[key] = DemoPool(st.ds, st.split, cfg.history_len, cfg.seed, cfg.similarity_pool, emb)
        elif cfg.method == "similarity" and st.pools[key].embedder is None:
            st.pools[key].embedder = self.embedder()
        return st.pools[key]

    def effect_ranking(self, cfg: EvalConfig, user: str):
        """The Effect_D ranking of candidate demonstrations for ``user`` (``effect``) or for everyone
        (``effect-global``, over the last ``effect_users`` of the seeded validation-user order)."""
        from lrgd.demos.effect_select import EffectRanker

        key = (cfg.dataset, cfg.model, cfg.history_len, cfg.seed, cfg.effect_pool)
        if key not in self._rankers:
            self._rankers[key] = EffectRanker(
                self.lm(cfg.model), self.pool(cfg), cfg.effect_pool, seed=cfg.seed
            )
        ranker = self._rankers[key]
        if cfg.method == "effect":
            return ranker.for_user(user)
        gkey = (*key, cfg.effect_users)
        if gkey not in self._global:
            order, _ = self.eligible_users(cfg.dataset, "valid", cfg.seed)
            self._global[gkey] = ranker.global_ranking(order[::-1][: cfg.effect_users])
        return self._global[gkey]

    def validation_variant(
        self, model: str, seed: int = 0, metric: str = "NDCG@10"
    ) -> tuple[str, dict, dict]:
        """(variant, pooled ``metric`` per variant, results per dataset): the score variant chosen on the
        preset's validation users, zero-shot, pooled over ``preset.valid_datasets`` (never on test users)."""
        p = self.preset
        valid = {
            name: self.run(
                EvalConfig(name, "zero-shot", split="valid", n_users=p.n_valid_users, model=model, seed=seed)
            )
            for name in p.valid_datasets
        }
        variant, pooled = choose_variant(list(valid.values()), metric)
        return variant, pooled, valid

    # --------------------------------------------------------------------------- users and candidates

    def eligible_users(self, dataset: str, split: str, seed: int = 0) -> tuple[list[str], dict[str, int]]:
        """Users in a seeded, prefix-stable order (the first n of a larger run are the n of a smaller),
        and counts of users left out and why."""
        st = self.data(dataset)
        part = st.split.test if split == "test" else st.split.valid
        items = st.ds.items
        ok, excluded = (
            [],
            {"fewer than 3 items": st.split.skipped, "untitled target": 0, "no titled history": 0},
        )
        for u in sorted(part):
            hist, target = part[u]
            if not items[target].has_title:
                excluded["untitled target"] += 1
            elif not any(items[i].has_title for i in hist):
                excluded["no titled history"] += 1
            else:
                ok.append(u)
        if not ok:
            raise DataError(
                f"{dataset}: no user has a titled target and a non-empty titled history in the {split} split "
                f"({excluded}); check the item file's titles"
            )
        rng = np.random.default_rng([seed, zlib.crc32(dataset.encode()), zlib.crc32(split.encode())])
        return [ok[j] for j in rng.permutation(len(ok))], excluded

    def candidates(self, cfg: EvalConfig, users: Sequence[str]) -> dict[str, list[str]]:
        """Seeded candidates (target + N−1 unseen items), saved once per (dataset, split, N, seed) and read
        back, so every method ranks identical lists."""
        st = self.data(cfg.dataset)
        path = (
            self.root / "partial" / "candidates"
            / f"{cfg.dataset}-{cfg.split}-c{cfg.n_candidates}-s{cfg.seed}-{st.fingerprint}.json"
        )  # fmt: skip
        saved = json.loads(path.read_text()) if path.is_file() else {}
        part = st.split.test if cfg.split == "test" else st.split.valid
        missing = [u for u in users if u not in saved]
        for u in missing:
            hist, target = part[u]
            saved[u] = sample_candidates(st.ds, u, target, hist, n=cfg.n_candidates, seed=cfg.seed)
        if missing:
            write_json(path, saved)
        return {u: saved[u] for u in users}

    def paths(self, cfg: EvalConfig) -> tuple[Path, Path]:
        """(partial per-user file, final summary file) of ``cfg``."""
        st = self.data(cfg.dataset)
        # fields that cannot change this condition's records are neutralised, so they do not split caches
        keyed = asdict(
            replace(
                cfg,
                n_users=None,
                model=cfg.model if cfg.llm else "-",
                similarity_pool=cfg.similarity_pool if cfg.method == "similarity" else 0,
                max_new_tokens=cfg.max_new_tokens if cfg.mode == "generate" else 0,
            )
        )
        if cfg.method not in EFFECT_SELECTORS:  # absent, not neutralised: earlier caches keep their keys
            del keyed["effect_pool"], keyed["effect_users"]
        elif cfg.method == "effect":
            del keyed["effect_users"]
        keyed.update(data=st.fingerprint, version=RECORD_VERSION)
        if cfg.llm:
            keyed["model_id"] = self.model_id(cfg.model)
        key = hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:12]
        model = Path(cfg.model).name if cfg.llm else "ref"
        partial = self.root / "partial" / cfg.dataset / f"{cfg.name}-{model}-{key}.jsonl"
        users = "all" if cfg.n_users is None else f"n{cfg.n_users}"
        final = self.root / "eval" / cfg.dataset / f"{cfg.name}-{model}-{users}.json"
        return partial, final

    def records(self, cfg: EvalConfig) -> list[dict]:
        """The per-user records of ``cfg``'s users (run it first), in user order."""
        order, _ = self.eligible_users(cfg.dataset, cfg.split, cfg.seed)
        users = order if cfg.n_users is None else order[: cfg.n_users]
        done = {r["user"]: r for r in _read_records(self.paths(cfg)[0])}
        missing = [u for u in users if u not in done]
        if missing:
            raise ConfigError(
                f"{cfg.dataset} {cfg.name}: {len(missing)} users not evaluated yet; call run() first"
            )
        return [done[u] for u in users]

    # --------------------------------------------------------------------------- one condition

    def run(self, cfg: EvalConfig, stop_after: int | None = None, on_user: Callable | None = None) -> dict:
        """Evaluate ``cfg``; resume from its partial file. ``stop_after`` stops after that many *new* users
        without writing the summary (what an interruption leaves behind). Returns the summary dict."""
        from lrgd.progress import progress
        from lrgd.provenance import Provenance

        cfg.validate()
        t0 = time.perf_counter()
        order, excluded = self.eligible_users(cfg.dataset, cfg.split, cfg.seed)
        users = order if cfg.n_users is None else order[: cfg.n_users]
        cands = self.candidates(cfg, users)
        partial, final = self.paths(cfg)
        done = {r["user"]: r for r in _read_records(partial)}
        todo = [u for u in users if u not in done]
        new = 0
        if todo:
            it = todo if self.quiet else progress(todo, f"{cfg.dataset} {cfg.name}", total=len(todo))
            for u in it:
                rec = self._evaluate_user(cfg, u, cands[u])
                _append_record(partial, rec)
                done[u] = rec
                new += 1
                if on_user is not None:
                    on_user(rec)
                if stop_after is not None and new >= stop_after and len(done) < len(users):
                    return {"interrupted": True, "done": len(done), "partial": str(partial)}
        records = [done[u] for u in users]
        result = self._summarize(cfg, records, excluded, len(order))
        prov = Provenance(profile=self.profile, device=self.device, seed=cfg.seed, dataset=cfg.dataset)
        if cfg.llm:
            prov.set_model(cfg.model, *self.model_source(cfg.model))
        prov.started = time.time() - (time.perf_counter() - t0)
        result["provenance"] = {
            **prov.finish().as_dict(),
            "method": cfg.method,
            "k": cfg.k,
            # measured when each user was computed (read back from the records on a cached run)
            "seconds_per_user": float(np.mean([r.get("seconds", 0.0) for r in records])),
            "null_seconds_per_user": float(np.mean([r.get("null_seconds", 0.0) for r in records])),
            "computed_users": new,
            "cached_users": len(users) - new,
            "partial": str(partial),
        }
        write_json(final, result)
        return result

    def _summarize(self, cfg: EvalConfig, records: list[dict], excluded: dict, n_eligible: int) -> dict:
        variants = list(records[0]["rank"]) if records else []
        ranks = {v: [r["rank"][v] for r in records] for v in variants}
        out = {
            "config": asdict(cfg),
            "users": [r["user"] for r in records],
            "n_users": len(records),
            "n_eligible": n_eligible,
            "excluded": excluded,
            "ranks": ranks,
            "metrics": {v: summarize(ranks[v], self.preset.n_boot, cfg.seed) for v in variants},
        }
        if cfg.llm:
            out["prompt_tokens"] = float(np.mean([r["prompt_tokens"] for r in records]))
            out["truncated_users"] = sum(1 for r in records if any(r["truncation"]))
            out["history_items_dropped"] = sum(r["truncation"][0] for r in records)
            out["demos_dropped"] = sum(r["truncation"][1] for r in records)
            out["guarded"] = sum(r["guarded"] for r in records)
            out["fallback_demos"] = sum(r["fallback"] for r in records)
            if cfg.mode == "generate":
                out["parse_failure_rate"] = float(np.mean([r["parse_failed"] for r in records]))
                out["mean_named"] = float(np.mean([r["n_matched"] for r in records]))
        return out

    def _tokens(self, cfg: EvalConfig, title: str, sep: str) -> list[int]:
        """Token ids of ``sep + title`` (cached by title: item ids are not unique across datasets)."""
        key = (cfg.model, sep, title)
        if key not in self._token_cache:
            from lrgd.rec.rank import continuation_ids

            self._token_cache[key] = continuation_ids(self.lm(cfg.model).tokenizer, [title], sep)[0]
        return self._token_cache[key]

    def _evaluate_user(self, cfg: EvalConfig, user: str, cand: list[str]) -> dict:
        from lrgd.rec.rank import target_rank

        t0 = time.perf_counter()
        st = self.data(cfg.dataset)
        part = st.split.test if cfg.split == "test" else st.split.valid
        hist, target = part[user]
        if cfg.order == "reversed":
            cand = cand[::-1]
        elif cfg.order == "shuffled":
            rng = np.random.default_rng([cfg.seed, 99, zlib.crc32(user.encode())])
            cand = [cand[j] for j in rng.permutation(len(cand))]
        rec: dict = {"user": user, "target": target, "candidates": cand}
        if not cfg.llm:
            if st.references is None:
                st.references = References(st.ds, st.split, cfg.seed)
            s = st.references.score(cfg.method, user, hist, cand)
            rec["rank"] = {"score": target_rank(s, cand, target, user, cfg.seed)}
            rec["seconds"] = round(time.perf_counter() - t0, 4)
            return rec
        return self._evaluate_llm_user(cfg, user, hist, target, cand, rec, t0)

    def _evaluate_llm_user(self, cfg, user, hist, target, cand, rec, t0) -> dict:
        import torch

        from lrgd.rec.prompts import (
            build_prompt,
            fit_prompt,
            generate_prompt_parts,
            null_prompt_parts,
            prompt_parts,
        )
        from lrgd.rec.rank import (
            continuation_sep,
            generate_and_parse,
            score_continuations,
            target_rank,
            variant_scores,
        )

        st = self.data(cfg.dataset)
        lm = self.lm(cfg.model)
        chat = lm.info.chat
        sep = continuation_sep(chat)
        items = st.ds.items
        titles = [st.ds.title(c) for c in cand]
        conts = [self._tokens(cfg, t, sep) for t in titles]
        ranking = self.effect_ranking(cfg, user) if cfg.method in EFFECT_SELECTORS else None
        sel = self.pool(cfg).select(cfg.method, user, cfg.k, hist, None if ranking is None else ranking.order)
        history = [items[i].title for i in hist if items[i].has_title][-cfg.history_len :]
        window = cfg.max_prompt_tokens or lm.info.max_positions
        sliding = getattr(lm.model.config.get_text_config(), "sliding_window", None)
        if sliding:  # the cached scorer needs every layer to see the whole prompt (Gemma 3: 512)
            window = min(window, sliding - 1)
        listed = titles if (cfg.list_candidates or cfg.mode == "generate") else None
        parts_fn = generate_prompt_parts if cfg.mode == "generate" else prompt_parts
        reserve = cfg.max_new_tokens if cfg.mode == "generate" else max(len(c) for c in conts)
        prompt, trunc = fit_prompt(
            lm.tokenizer, history, list(sel.demos), chat, window, reserve, listed, parts_fn=parts_fn
        )
        rec.update(
            prompt_tokens=len(prompt.input_ids),
            truncation=[trunc.history_dropped, trunc.demos_dropped],
            demo_sources=[list(s) for s in sel.sources[: len(sel.demos) - trunc.demos_dropped]],
            guarded=sel.guarded,
            fallback=sel.fallback,
        )
        if ranking is not None:  # Effect_D of the chosen demonstrations, as ranked
            chosen = {s: v for s, v in zip(ranking.order, ranking.scores)}
            rec["effect"] = [round(chosen[s], 5) if s in chosen else None for s in sel.sources]
        with torch.inference_mode():
            if cfg.mode == "generate":
                g = generate_and_parse(
                    lm.model, lm.tokenizer, prompt.input_ids, titles, cand, user, cfg.seed, cfg.max_new_tokens
                )
                pos = g.order.index(cand.index(target)) + 1
                rec.update(
                    rank={"generated": pos}, text=g.text, n_matched=g.n_matched, parse_failed=g.parse_failed
                )
                rec["seconds"] = round(time.perf_counter() - t0, 4)
                return rec
            s = score_continuations(lm.model, prompt.input_ids, conts)
            rec["seconds"] = round(time.perf_counter() - t0, 4)
            t1 = time.perf_counter()
            missing = [t for t in dict.fromkeys(titles) if (cfg.model, t) not in self._null]
            if missing:
                null = build_prompt(lm.tokenizer, null_prompt_parts(), chat=chat)
                ns = score_continuations(
                    lm.model, null.input_ids, [self._tokens(cfg, t, sep) for t in missing]
                )
                for t, v in zip(missing, ns.summed):
                    self._null[(cfg.model, t)] = float(v)
            rec["null_seconds"] = round(time.perf_counter() - t1, 4)
        null_summed = np.array([self._null[(cfg.model, t)] for t in titles])
        var = variant_scores(s.summed, s.n_tokens, null_summed)
        rec["rank"] = {v: target_rank(var[v], cand, target, user, cfg.seed) for v in var}
        rec["title_tokens"] = s.n_tokens.tolist()
        rec["summed"] = [round(float(x), 5) for x in s.summed]
        rec["null"] = [round(float(x), 5) for x in null_summed]
        return rec


# ----------------------------------------------------------------------------- helpers for the notebook


def choose_variant(results: Sequence[dict], metric: str = "NDCG@10") -> tuple[str, dict[str, float]]:
    """The score variant with the best mean ``metric`` pooled over the users of ``results``
    (validation runs); ties go to the earlier of :data:`lrgd.rec.rank.SCORE_VARIANTS`."""
    from lrgd.rec.rank import SCORE_VARIANTS

    pooled = {}
    for v in SCORE_VARIANTS:
        vals = [x for r in results for x in per_user_metrics(r["ranks"][v])[metric]]
        pooled[v] = float(np.mean(vals)) if vals else float("nan")
    best = max(SCORE_VARIANTS, key=lambda v: (pooled[v], -SCORE_VARIANTS.index(v)))
    return best, pooled


def metric_values(result: dict, variant: str, metric: str) -> np.ndarray:
    """Per-user values of ``metric`` under ``variant`` (``score`` for references)."""
    return per_user_metrics(result["ranks"][variant])[metric]


def expected_random_metrics(n_candidates: int) -> dict[str, float]:
    """Each metric's expectation when the target's rank is uniform on 1..N."""
    rows = [rank_metrics(r) for r in range(1, n_candidates + 1)]
    return {m: float(np.mean([x[m] for x in rows])) for m in METRICS}

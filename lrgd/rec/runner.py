"""The resumable evaluation runner: one :class:`~lrgd.rec.conditions.EvalConfig` → per-user records →
a summary with bootstrap CIs.

For each user of a seeded, prefix-stable sample (:meth:`Runner.users`) the runner takes the candidates
(seeded, saved once and read back, so every method ranks identical lists) and computes one record:

* a reference ranker (:mod:`lrgd.rec.references`) scores the candidates directly;
* an LLM condition goes through three named steps that notebooks call too —
  :meth:`Runner.user_prompt` (the selector's demonstrations, the history, the context-window limit),
  :meth:`Runner.score` (summed / mean / PMI log-likelihood of every candidate title) or
  :meth:`Runner.generate` (the model writes a ranked list).

Records are appended, one JSON line per user, to
``results/<profile>/partial/<dataset>/<name>-<model>-<key>.jsonl`` as soon as each user is done
(:mod:`lrgd.rec.records` reads them back and trusts nothing), so a re-run computes only the missing
users. When all users are done the summary is written atomically to
``results/<profile>/eval/<dataset>/<name>-<model>-<users>-<key>.json``.

``key`` (:meth:`Runner.key`) hashes the full configuration (every field but ``n_users``, plus the method's
parameters), the data fingerprint, the model's weights hash and the source of the modules that compute a
record (:func:`lrgd.results.cache_key`): change any of them and the result is recomputed.

>>> runner = Runner(profile="ci")  # doctest: +SKIP
>>> res = runner.run(EvalConfig("amazon-games", "similarity", k=2, n_users=20))
>>> res["metrics"]["pmi"]["NDCG@10"]
{'mean': ..., 'lo': ..., 'hi': ...}
"""

from __future__ import annotations

import json
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lrgd.config import get_profile, resolve_device, resolve_dtype, results_dir
from lrgd.errors import ConfigError, DataError, ModelError
from lrgd.metrics import per_user_metrics, summarize
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import Dataset, Split, leave_one_out, load_dataset, sample_candidates
from lrgd.rec.prompts import Prompt, Truncation
from lrgd.rec.records import RecordSchema, Skipped, append_record, read_records, seal
from lrgd.rec.references import References
from lrgd.rec.select import Selection
from lrgd.results import cache_key, code_hash, content_key, file_hash, write_json

#: modules whose source enters the key of every LLM record (plus the selector's own module and ``code``)
LLM_CODE = (
    "lrgd.rec.runner",
    "lrgd.rec.prompts",
    "lrgd.rec.rank",
    "lrgd.rec.select",
    "lrgd.rec.leakage",
    "lrgd.rec.data",
    "lrgd.llm",
)
#: modules whose source enters the key of every reference record (plus the ranker's module)
REFERENCE_CODE = ("lrgd.rec.runner", "lrgd.rec.rank", "lrgd.rec.data", "lrgd.rec.references")
#: the trained readers (``--model trained:<design>``): overrides of the profile's ``.reader`` section
READER_DESIGNS = {
    "trained:reader": {},  # titles + popularity + tags, pointer read-out
    "trained:reader-anon": {"titles": False},  # popularity + tags only (anonymous), pointer read-out
    "trained:reader-anon-nopointer": {"titles": False, "pointer": False},  # anonymous, W_o read-out only
}
#: trained models → the module that trains and scores them
TRAINED = dict.fromkeys(READER_DESIGNS, "lrgd.models.reader")
#: modules whose source enters the key of the saved candidate lists
CANDIDATE_CODE = ("lrgd.rec.data",)


def is_trained(model: str) -> bool:
    """Is ``model`` one of this library's trained models (``trained:<name>``) rather than an LLM?"""
    return model.startswith("trained:")


@dataclass
class DatasetState:
    """A loaded dataset, its leave-one-out split, its fingerprint and its reference statistics."""

    ds: Dataset
    split: Split
    fingerprint: str
    references: References | None = None


@dataclass(frozen=True)
class UserPrompt:
    """Everything the LLM sees for one user, as :meth:`Runner.user_prompt` built it.

    ``candidates`` are ids in the condition's order (``cfg.order``); ``titles`` [N] and ``continuations``
    [N] (token ids of ``sep + title``) follow it. ``history`` are the titles offered to the prompt
    builder, before the context-window limit dropped the oldest (``truncation``).
    """

    user: str
    target: str
    candidates: tuple[str, ...]
    titles: tuple[str, ...]
    continuations: tuple[tuple[int, ...], ...]
    sep: str
    history: tuple[str, ...]
    selection: Selection
    prompt: Prompt
    truncation: Truncation
    window: int  # the token budget the prompt was fitted to

    @property
    def shown_sources(self) -> tuple[tuple[str, int], ...]:
        """(pool user, cut) of the demonstrations that stayed in the prompt after truncation."""
        return self.selection.sources[: len(self.selection.demos) - self.truncation.demos_dropped]


class Runner:
    """Evaluates :class:`EvalConfig` s; holds the model, datasets and caches shared between them.

    ``device`` is checked here (an unavailable device fails before anything is computed or written).
    ``dtype`` is the LLMs' weight and activation dtype (``auto``: bfloat16 on cuda, float32 elsewhere); it
    and the profile's scoring batch (``eval.score_mode``, ``eval.score_tokens``) enter every LLM key.
    """

    def __init__(
        self,
        profile: str = "ci",
        device: str = "auto",
        quiet: bool = False,
        results_root: Path | None = None,
        data_dir: Path | None = None,
        dtype: str = "auto",
    ) -> None:
        self.profile = get_profile(profile)
        self.preset = self.profile.eval
        self.dtype = resolve_dtype(dtype, resolve_device(device))
        self.device = device
        self.quiet = quiet
        name = self.profile.name
        self.root = Path(results_root) / name if results_root is not None else results_dir(name)
        self.data_dir = data_dir
        self._data: dict[str, DatasetState] = {}
        self._models: dict = {}
        self._embedder = None
        self._memo: dict = {}
        # Keyed by the *title*, not the item id: ids repeat across datasets (Toys, Games, ml-100k).
        self._null: dict[
            tuple[str, str], float
        ] = {}  # (model, title) → summed log-prob after the null prompt
        self._token_cache: dict[tuple[str, str, str], list[int]] = {}  # (model, sep, title) → token ids

    # --------------------------------------------------------------------------- shared state

    def data(self, name: str) -> DatasetState:
        """The dataset ``name``, loaded once."""
        if name not in self._data:
            ds = load_dataset(name, self.data_dir)
            self._data[name] = DatasetState(ds, leave_one_out(ds), ds.fingerprint())
        return self._data[name]

    def lm(self, name: str):
        """The model ``name`` (:func:`lrgd.llm.load_model`, or :meth:`trained`), loaded once."""
        if is_trained(name):
            return self.trained(name)
        if name not in self._models:
            import importlib

            # lrgd.llm first: it filters tqdm's widget warning before transformers is imported
            from lrgd.llm import load_model

            importlib.import_module("transformers.utils.logging").set_verbosity_error()
            self._models[name] = load_model(name, self.device, self.dtype)
        return self._models[name]

    # --------------------------------------------------------------------------- trained models

    def catalogue(self, name: str, titles: bool = True):
        """Dataset ``name`` as the trained reader sees it (:class:`lrgd.models.reader.Catalogue`); without
        ``titles`` no title is embedded (the anonymous reader never reads them)."""
        from lrgd.models.reader import build_catalogue

        st = self.data(name)
        return self.memo(
            ("catalogue", name, st.fingerprint, titles),
            lambda: build_catalogue(st.ds, st.split, st.fingerprint, self.embedder() if titles else None),
        )

    def reader_sizes(self, name: str):
        """The reader's sizes: the profile's ``.reader`` with the design of ``name`` (READER_DESIGNS)."""
        from dataclasses import replace

        if name not in READER_DESIGNS:
            raise ConfigError(f"unknown trained model {name!r}; choose one of {', '.join(READER_DESIGNS)}")
        return replace(self.profile.reader, **READER_DESIGNS[name])

    def embedder_fingerprint(self, titles: bool) -> str:
        """The title embedder's fingerprint, or ``"none"`` for a reader that reads no titles."""
        return self.embedder().fingerprint if titles else "none"

    def reader_data(self) -> dict[str, str]:
        """The reader's training datasets → their fingerprints (what its weights depend on)."""
        return {d: self.data(d).fingerprint for d in self.profile.reader.train_datasets}

    def trained(self, name: str):
        """The trained model ``name`` (``trained:reader``), read from its cache or trained (resuming)."""
        if name not in TRAINED:
            raise ConfigError(f"unknown trained model {name!r}; choose one of {', '.join(TRAINED)}")
        if name not in self._models:
            from lrgd.models.reader import load_or_train

            sizes = self.reader_sizes(name)
            cats = [self.catalogue(d, sizes.titles) for d in sizes.train_datasets]
            self._models[name] = load_or_train(cats, sizes, self.embedder_fingerprint(sizes.titles))
        return self._models[name]

    def model_source(self, name: str) -> tuple[str, str]:
        """(source file, sha256) of a model without loading it: a converted folder records its GGUF's
        hash; a plain HF folder hashes its config and weight files (once per process); a trained model
        gives its weight file and configuration key."""
        from lrgd.llm import MODELS, gguf_source, model_folder

        if is_trained(name):
            from lrgd.models.reader import weights_path

            sizes = self.reader_sizes(name)
            path = weights_path(sizes, self.reader_data(), self.embedder_fingerprint(sizes.titles))
            return path.name, path.stem

        if name in MODELS:  # a packaged GGUF: its hash without converting it (reading a key is cheap)
            return self.memo(("gguf", name), lambda: gguf_source(name))
        folder = model_folder(name)
        src = folder / "lrgd_source.json"
        if src.is_file():  # a converted folder given by its path
            meta = json.loads(src.read_text())
            return meta["source_file"], meta["sha256"]

        def weights() -> str:
            files = [
                folder / "config.json",
                *sorted(folder.glob("*.safetensors")),
                *sorted(folder.glob("*.bin")),
            ]
            return content_key([(f.name, file_hash(f)) for f in files], n=64)

        stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(folder.iterdir()))
        return "config.json", self.memo(("weights", str(folder), stamp), weights)

    def embedder(self):
        """The sentence embedder of the similarity selector (:class:`lrgd.rec.embed.Embedder`)."""
        if self._embedder is None:
            from lrgd.rec.embed import Embedder

            self._embedder = Embedder("cpu" if self.device == "auto" else self.device)
        return self._embedder

    def memo(self, key: tuple, make: Callable[[], object]) -> object:
        """``make()`` once per ``key`` in this process (selectors keep rankings and indexes here); the key
        must name everything the value depends on."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def pool(self, cfg: EvalConfig):
        """The demonstration pool of ``cfg``'s dataset, history length, seed and guard."""
        from lrgd.rec.select import DemoPool

        st = self.data(cfg.dataset)
        return self.memo(
            ("pool", cfg.dataset, cfg.history_len, cfg.seed, cfg.guard),
            lambda: DemoPool(st.ds, st.split, cfg.history_len, cfg.seed, cfg.guard),
        )

    def method(self, cfg: EvalConfig):
        """``cfg``'s selector or reference ranker, with its parameters (defaults from this profile)."""
        return cfg.method_object(self.profile)

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

    def users(self, cfg: EvalConfig) -> list[str]:
        """The first ``cfg.n_users`` eligible users (all of them for ``None``)."""
        order, _ = self.eligible_users(cfg.dataset, cfg.split, cfg.seed)
        return order if cfg.n_users is None else order[: cfg.n_users]

    def target(self, cfg: EvalConfig, user: str) -> tuple[list[str], str]:
        """(history ids, held-out target id) of ``user`` in ``cfg``'s split."""
        st = self.data(cfg.dataset)
        part = st.split.test if cfg.split == "test" else st.split.valid
        if user not in part:
            raise DataError(f"{cfg.dataset}: user {user!r} is not in the {cfg.split} split")
        return part[user]

    def candidates_path(self, cfg: EvalConfig) -> Path:
        st = self.data(cfg.dataset)
        key = content_key(
            {"dataset": cfg.dataset, "split": cfg.split, "n_candidates": cfg.n_candidates, "seed": cfg.seed,
             "data": st.fingerprint, "code": code_hash(*CANDIDATE_CODE)}
        )[:12]  # fmt: skip
        return (
            self.root / "partial" / "candidates" / f"{cfg.dataset}-{cfg.split}-c{cfg.n_candidates}-{key}.json"
        )

    def candidates(self, cfg: EvalConfig, users: Sequence[str], save: bool = True) -> dict[str, list[str]]:
        """Seeded candidates (target + N−1 unseen items) of ``users``, saved once per (dataset, split, N,
        seed, data) and read back, so every method ranks identical lists. A saved list that is not N
        distinct known ids holding the user's target is drawn again."""
        st = self.data(cfg.dataset)
        path = self.candidates_path(cfg)
        try:
            saved = json.loads(path.read_text()) if path.is_file() else {}
        except (ValueError, OSError):
            saved = {}
        saved = saved if isinstance(saved, dict) else {}
        missing = []
        for u in users:
            hist, target = self.target(cfg, u)
            c = saved.get(u)
            ok = (
                isinstance(c, list) and len(c) == cfg.n_candidates == len(set(map(str, c)))
                and target in c and all(i in st.ds.items for i in c)
            )  # fmt: skip
            if not ok:
                try:
                    saved[u] = sample_candidates(st.ds, u, target, hist, n=cfg.n_candidates, seed=cfg.seed)
                except DataError as exc:  # name the option that asked for too many
                    raise DataError(f"{exc}; lower --candidates (got {cfg.n_candidates})") from exc
                missing.append(u)
        if missing and save:
            write_json(path, saved)
        return {u: saved[u] for u in users}

    # --------------------------------------------------------------------------- keys and files

    def code_modules(self, cfg: EvalConfig) -> tuple[str, ...]:
        """The modules whose source computes ``cfg``'s records."""
        method = self.method(cfg)
        base = LLM_CODE if cfg.llm else REFERENCE_CODE
        if cfg.llm and is_trained(cfg.model):
            base = (*base, TRAINED.get(cfg.model, "lrgd.models.reader"))
        return tuple(dict.fromkeys((*base, type(method).__module__, *getattr(method, "code", ()))))

    def key(self, cfg: EvalConfig) -> str:
        """Hash (12 hex) of the full configuration but ``n_users``, the data, the weights and the code."""
        config = {**cfg.as_dict(), "params": asdict(self.method(cfg))}
        del config["n_users"]
        if cfg.llm and not is_trained(cfg.model):  # the numerics of an LLM's scores
            config["numerics"] = {"dtype": self.dtype, "mode": self.preset.score_mode,
                                  "tokens": self.preset.score_tokens}  # fmt: skip
        weights = self.model_source(cfg.model)[1] if cfg.llm else None
        return cache_key(
            config, self.data(cfg.dataset).fingerprint, weights, code_hash(*self.code_modules(cfg))
        )[:12]

    def paths(self, cfg: EvalConfig, key: str | None = None) -> tuple[Path, Path]:
        """(per-user record file, summary file) of ``cfg``; both names carry :meth:`key`."""
        key = key or self.key(cfg)
        model = Path(cfg.model).name.replace(":", "-") if cfg.llm else "ref"
        partial = self.root / "partial" / cfg.dataset / f"{cfg.name}-{model}-{key}.jsonl"
        users = "all" if cfg.n_users is None else f"n{cfg.n_users}"
        final = self.root / "eval" / cfg.dataset / f"{cfg.name}-{model}-{users}-{key}.json"
        return partial, final

    def schema(self, cfg: EvalConfig) -> RecordSchema:
        """What a valid record of ``cfg`` holds (:class:`lrgd.rec.records.RecordSchema`)."""
        from lrgd.rec.rank import SCORE_VARIANTS

        st = self.data(cfg.dataset)
        part = st.split.test if cfg.split == "test" else st.split.valid
        number = (int, float)
        fields: dict = {"seconds": number}
        if not cfg.llm:
            variants = ("score",)
        else:
            fields.update(prompt_tokens=int, truncation=list, demo_sources=list, guarded=int, fallback=int)
            if is_trained(cfg.model):
                variants = ("score",)
            elif cfg.mode == "generate":
                variants = ("generated",)
                fields.update(text=str, n_matched=int, parse_failed=bool)
            else:
                variants = SCORE_VARIANTS
                fields.update(title_tokens=list, summed=list, null=list, null_seconds=number)
        targets = {u: t for u, (_, t) in part.items()}
        return RecordSchema(cfg.n_candidates, tuple(variants), targets, fields)

    def read(self, cfg: EvalConfig, key: str | None = None) -> tuple[dict[str, dict], Skipped]:
        """The valid records of ``cfg`` on disk by user, and the lines skipped (reported on stderr; the
        file is rewritten without them)."""
        key = key or self.key(cfg)
        partial, _ = self.paths(cfg, key)
        done, skipped = read_records(partial, key, self.schema(cfg).problem)
        if skipped.total:
            print(f"{partial}: {skipped}; those users are recomputed", file=sys.stderr)
        return done, skipped

    def records(self, cfg: EvalConfig) -> list[dict]:
        """The per-user records of ``cfg``'s users (run it first), in user order."""
        users = self.users(cfg)
        done, _ = self.read(cfg)
        missing = [u for u in users if u not in done]
        if missing:
            raise ConfigError(
                f"{cfg.dataset} {cfg.name}: {len(missing)} users not evaluated yet; call run() first"
            )
        return [done[u] for u in users]

    # --------------------------------------------------------------------------- one condition

    def run(self, cfg: EvalConfig, stop_after: int | None = None, on_user: Callable | None = None) -> dict:
        """Evaluate ``cfg``; resume from its record file. ``stop_after`` stops after that many *new* users
        without writing the summary (what an interruption leaves behind). Returns the summary dict.

        Nothing is written before the configuration, the data and (when users remain) the model have
        loaded, so a bad argument, a missing model or an unavailable device leaves no file behind.
        """
        from lrgd.progress import progress
        from lrgd.provenance import Provenance

        cfg.validate()
        t0 = time.perf_counter()
        order, excluded = self.eligible_users(cfg.dataset, cfg.split, cfg.seed)
        users = order if cfg.n_users is None else order[: cfg.n_users]
        key = self.key(cfg)
        partial, final = self.paths(cfg, key)
        done, skipped = self.read(cfg, key)
        todo = [u for u in users if u not in done]
        new = 0
        if todo:
            if cfg.llm:
                self.lm(cfg.model)  # a model or device error ends the run here, before any file is written
            cands = self.candidates(cfg, todo)
            it = todo if self.quiet else progress(todo, f"{cfg.dataset} {cfg.name}", total=len(todo))
            for u in it:
                rec = seal(self.evaluate_user(cfg, u, cands[u]), key)
                append_record(partial, rec)
                done[u] = rec
                new += 1
                if on_user is not None:
                    on_user(rec)
                if (
                    stop_after is not None
                    and new >= stop_after
                    and len([u for u in users if u in done]) < len(users)
                ):
                    return {
                        "interrupted": True,
                        "done": sum(u in done for u in users),
                        "partial": str(partial),
                    }
        records = [done[u] for u in users]
        result = self._summarize(cfg, records, excluded, len(order))
        prov = Provenance(profile=self.profile.name, device=self.device, seed=cfg.seed, dataset=cfg.dataset)
        if cfg.llm:
            prov.set_model(cfg.model, *self.model_source(cfg.model))
        prov.started = time.time() - (time.perf_counter() - t0)
        st = self.data(cfg.dataset)
        result["provenance"] = {
            **prov.finish().as_dict(),
            "method": cfg.method,
            "k": cfg.k,
            "dtype": self.dtype if cfg.llm and not is_trained(cfg.model) else None,
            "key": key,
            "data_path": str(st.ds.source),
            "data_fingerprint": st.fingerprint,
            # measured when each user was computed (read back from the records on a cached run)
            "seconds_per_user": float(np.mean([r.get("seconds", 0.0) for r in records])),
            "null_seconds_per_user": float(np.mean([r.get("null_seconds", 0.0) for r in records])),
            "computed_users": new,
            "cached_users": len(users) - new,
            "skipped_record_lines": skipped.as_dict(),
            "partial": str(partial),
        }
        write_json(final, result)
        return result

    def _summarize(self, cfg: EvalConfig, records: list[dict], excluded: dict, n_eligible: int) -> dict:
        variants = list(records[0]["rank"]) if records else []
        ranks = {v: [r["rank"][v] for r in records] for v in variants}
        out = {
            "config": cfg.as_dict(),
            "method_params": asdict(self.method(cfg)),
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

    # --------------------------------------------------------------------------- one user

    def ordered(self, cfg: EvalConfig, user: str, candidates: Sequence[str]) -> list[str]:
        """The saved candidates in ``cfg.order``: as sampled, reversed, or shuffled by (seed, user)."""
        cand = list(candidates)
        if cfg.order == "reversed":
            return cand[::-1]
        if cfg.order == "shuffled":
            rng = np.random.default_rng([cfg.seed, 99, zlib.crc32(user.encode())])
            return [cand[j] for j in rng.permutation(len(cand))]
        return cand

    def evaluate_user(self, cfg: EvalConfig, user: str, candidates: Sequence[str]) -> dict:
        """One user's record (unsealed): the target's rank under every score variant, and how."""
        from lrgd.rec.rank import target_rank, variant_scores

        t0 = time.perf_counter()
        hist, target = self.target(cfg, user)
        if not cfg.llm:
            cand = self.ordered(cfg, user, candidates)
            st = self.data(cfg.dataset)
            if st.references is None:
                st.references = References(st.ds, st.split, cfg.seed)
            method = self.method(cfg)
            if hasattr(method, "score_with"):  # a reference that reads demonstrations (e.g. ref-vote)
                s = method.score_with(self, cfg, user, hist, cand)
            else:
                s = method.score(st.references, user, hist, cand)
            rank = {"score": target_rank(s, cand, target, user, cfg.seed)}
            return {"user": user, "target": target, "candidates": cand, "rank": rank,
                    "seconds": round(time.perf_counter() - t0, 4)}  # fmt: skip
        if is_trained(cfg.model):
            return self.evaluate_trained(cfg, user, candidates, t0)
        up = self.user_prompt(cfg, user, candidates)
        cand = list(up.candidates)
        sel, trunc = up.selection, up.truncation
        rec: dict = {"user": user, "target": target, "candidates": cand}
        rec.update(
            prompt_tokens=len(up.prompt.input_ids),
            truncation=[trunc.history_dropped, trunc.demos_dropped],
            demo_sources=[list(s) for s in up.shown_sources],
            guarded=sel.guarded,
            fallback=sel.fallback,
            **sel.extra,
        )
        if cfg.mode == "generate":
            g = self.generate(cfg, up)
            rec.update(
                rank={"generated": g.order.index(cand.index(target)) + 1},
                text=g.text,
                n_matched=g.n_matched,
                parse_failed=g.parse_failed,
                seconds=round(time.perf_counter() - t0, 4),
            )
            return rec
        s = self.prompt_scores(cfg, up)
        rec["seconds"] = round(time.perf_counter() - t0, 4)
        t1 = time.perf_counter()
        null = self.null_scores(cfg, up.titles)
        rec["null_seconds"] = round(time.perf_counter() - t1, 4)
        var = variant_scores(s.summed, s.n_tokens, null)
        rec["rank"] = {v: target_rank(var[v], cand, target, user, cfg.seed) for v in var}
        rec["title_tokens"] = s.n_tokens.tolist()
        rec["summed"] = [round(float(x), 5) for x in s.summed]
        rec["null"] = [round(float(x), 5) for x in null]
        return rec

    def demo_ids(self, cfg: EvalConfig, sel: Selection) -> list[tuple[list[str], str]]:
        """The chosen demonstrations as item ids: (history ids, next id) (:meth:`DemoPool.demo_items`)."""
        return [(list(ids[:-1]), ids[-1]) for ids in self.pool(cfg).demo_items(sel)]

    @staticmethod
    def tag_seed(cfg: EvalConfig, user: str) -> int:
        """The seed of a trained model's per-prompt identity tags for ``user`` (one map per user and seed)."""
        return zlib.crc32(f"{cfg.seed}|tags|{user}".encode())

    def evaluate_trained(self, cfg: EvalConfig, user: str, candidates: Sequence[str], t0: float) -> dict:
        """One user's record for a trained model: the selector's demonstrations (as ids), one forward pass."""
        from lrgd.models.reader import score
        from lrgd.rec.rank import target_rank

        hist, target = self.target(cfg, user)
        cand = self.ordered(cfg, user, candidates)
        sel = self.select(cfg, user, hist)
        sizes = self.reader_sizes(cfg.model)
        model, cat = self.trained(cfg.model).model, self.catalogue(cfg.dataset, sizes.titles)
        s = score(model, cat, self.demo_ids(cfg, sel), hist, cand, sizes, self.tag_seed(cfg, user))
        m, L = sizes.demo_history, sizes.query_len
        return {"user": user, "target": target, "candidates": cand,
                "rank": {"score": target_rank(s, cand, target, user, cfg.seed)},
                "prompt_tokens": 2 + len(sel.demos) * (m + 1) + L,
                "truncation": [max(0, len(hist) - L), 0],
                "demo_sources": [list(x) for x in sel.sources], "guarded": sel.guarded,
                "fallback": sel.fallback, **sel.extra,
                "seconds": round(time.perf_counter() - t0, 4)}  # fmt: skip

    # --------------------------------------------------------------------------- the LLM steps

    def select(self, cfg: EvalConfig, user: str, history: Sequence[str]) -> Selection:
        """``cfg.k`` demonstrations for ``user`` from ``cfg``'s selector (through the :class:`Selector`
        protocol only)."""
        sel = self.method(cfg).select(self, cfg, user, cfg.k, history)
        if not isinstance(sel, Selection) or len(sel.demos) > cfg.k or len(sel.sources) != len(sel.demos):
            raise ConfigError(
                f"selector {cfg.method!r} returned {type(sel).__name__} with "
                f"{len(getattr(sel, 'demos', ()))} demonstrations for k={cfg.k}; a selector must return a "
                "Selection of at most k demonstrations, one source each"
            )
        return sel

    def window(self, cfg: EvalConfig) -> int:
        """The prompt's token budget: ``cfg.max_prompt_tokens`` or the model's context window, and below a
        sliding window (the cached scorer needs every layer to see the whole prompt; Gemma 3: 512)."""
        lm = self.lm(cfg.model)
        window = cfg.max_prompt_tokens if cfg.max_prompt_tokens is not None else lm.info.max_positions
        text_config = (
            lm.model.config.get_text_config()
            if hasattr(lm.model.config, "get_text_config")
            else lm.model.config
        )
        sliding = getattr(text_config, "sliding_window", None)
        return min(window, sliding - 1) if sliding else window

    def _tokens(self, cfg: EvalConfig, title: str, sep: str) -> list[int]:
        """Token ids of ``sep + title`` (cached by title: item ids are not unique across datasets)."""
        key = (cfg.model, sep, title)
        if key not in self._token_cache:
            from lrgd.rec.rank import continuation_ids

            self._token_cache[key] = continuation_ids(self.lm(cfg.model).tokenizer, [title], sep)[0]
        return self._token_cache[key]

    def user_prompt(self, cfg: EvalConfig, user: str, candidates: Sequence[str] | None = None) -> UserPrompt:
        """Step 1: the prompt ``cfg`` gives ``user``: the selector's demonstrations, the last
        ``cfg.history_len`` titles, the candidates listed when ``cfg.list_candidates`` or generate mode,
        fitted to :meth:`window` minus room for the longest title (oldest history first, then the last
        demonstrations; counted in ``truncation``).

        ``candidates``: the user's saved candidate ids (default: :meth:`candidates`); ``cfg.order`` is
        applied here.

        >>> up = runner.user_prompt(EvalConfig("amazon-games", "random", 2), user)  # doctest: +SKIP
        >>> print(up.prompt.text); up.truncation.truncated
        """
        from lrgd.rec.prompts import fit_prompt, generate_prompt_parts, prompt_parts
        from lrgd.rec.rank import continuation_sep

        st = self.data(cfg.dataset)
        lm = self.lm(cfg.model)
        sep = continuation_sep(lm.info.chat)
        hist, target = self.target(cfg, user)
        if candidates is None:
            candidates = self.candidates(cfg, [user])[user]
        cand = self.ordered(cfg, user, candidates)
        titles = [st.ds.title(c) for c in cand]
        conts = [self._tokens(cfg, t, sep) for t in titles]
        sel = self.select(cfg, user, hist)
        items = st.ds.items
        history = [items[i].title for i in hist if items[i].has_title][-cfg.history_len :]
        generate = cfg.mode == "generate"
        listed = titles if (cfg.list_candidates or generate) else None
        window = self.window(cfg)
        reserve = cfg.max_new_tokens if generate else max(len(c) for c in conts)
        try:
            prompt, trunc = fit_prompt(
                lm.tokenizer, history, list(sel.demos), lm.info.chat, window, reserve, listed,
                parts_fn=generate_prompt_parts if generate else prompt_parts,
            )  # fmt: skip
        except ModelError as exc:  # the budget was the user's option, not the model's window
            if cfg.max_prompt_tokens is None:
                raise
            raise ConfigError(
                f"--max-prompt-tokens {cfg.max_prompt_tokens} is too small for user {user!r}: {exc}; "
                "raise --max-prompt-tokens or omit it"
            ) from exc
        return UserPrompt(
            user, target, tuple(cand), tuple(titles), tuple(map(tuple, conts)), sep, tuple(history),
            sel, prompt, trunc, window,
        )  # fmt: skip

    def prompt_scores(self, cfg: EvalConfig, up: UserPrompt):
        """Summed log-prob and token count of every candidate title after ``up.prompt``
        (:class:`lrgd.rec.rank.ContinuationScores`, [N] each)."""
        import torch

        from lrgd.rec.rank import score_continuations

        p = self.preset
        with torch.inference_mode():
            return score_continuations(
                self.lm(cfg.model).model, up.prompt.input_ids, up.continuations, p.score_mode, p.score_tokens
            )

    def null_scores(self, cfg: EvalConfig, titles: Sequence[str]) -> np.ndarray:
        """Summed log-prob of each title after the history-free null prompt [N] (cached per title)."""
        import torch

        from lrgd.rec.prompts import build_prompt, null_prompt_parts
        from lrgd.rec.rank import continuation_sep, score_continuations

        missing = [t for t in dict.fromkeys(titles) if (cfg.model, t) not in self._null]
        if missing:
            lm = self.lm(cfg.model)
            sep = continuation_sep(lm.info.chat)
            null = build_prompt(lm.tokenizer, null_prompt_parts(), chat=lm.info.chat)
            with torch.inference_mode():
                conts = [self._tokens(cfg, t, sep) for t in missing]
                ns = score_continuations(
                    lm.model, null.input_ids, conts, self.preset.score_mode, self.preset.score_tokens
                )
            for t, v in zip(missing, ns.summed):
                self._null[(cfg.model, t)] = float(v)
        return np.array([self._null[(cfg.model, t)] for t in titles])

    def score(self, cfg: EvalConfig, up: UserPrompt) -> dict[str, np.ndarray]:
        """Step 2: every score variant of every candidate, ``{"summed", "mean", "pmi"}`` → [N]
        (:func:`lrgd.rec.rank.variant_scores`), in ``up.candidates`` order."""
        from lrgd.rec.rank import variant_scores

        s = self.prompt_scores(cfg, up)
        return variant_scores(s.summed, s.n_tokens, self.null_scores(cfg, up.titles))

    def generate(self, cfg: EvalConfig, up: UserPrompt):
        """Step 2 in generate mode: the model writes a ranked list, parsed back to candidate indices
        (:class:`lrgd.rec.rank.Generated`)."""
        import torch

        from lrgd.rec.rank import generate_and_parse

        lm = self.lm(cfg.model)
        with torch.inference_mode():
            return generate_and_parse(
                lm.model, lm.tokenizer, up.prompt.input_ids, list(up.titles), list(up.candidates), up.user,
                cfg.seed, cfg.max_new_tokens,
            )  # fmt: skip

    # --------------------------------------------------------------------------- chapter 2's choice

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


# ----------------------------------------------------------------------------- reading summaries


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
    """Per-user values [n] of ``metric`` under ``variant`` (``score`` for references) of a summary."""
    return per_user_metrics(result["ranks"][variant])[metric]

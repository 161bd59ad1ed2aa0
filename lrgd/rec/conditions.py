"""One evaluation condition (:class:`EvalConfig`) and its validation.

A condition names a dataset, a *method* — an LLM demonstration selector (:data:`lrgd.rec.select.SELECTORS`)
or a non-LLM reference ranker (:data:`lrgd.rec.references.REFERENCES`) — and everything else that
changes a per-user record. The method's own parameters travel in ``params`` (a mapping; the method's
declared defaults, or the profile's, fill the rest); :meth:`EvalConfig.method_object` builds the method
with them.

>>> EvalConfig("amazon-games", "similarity", k=2, params={"similarity_pool": 300}).validate().name
'test-similarity-k2'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from lrgd.errors import ConfigError
from lrgd.rec.data import DATASETS
from lrgd.rec.references import REFERENCES
from lrgd.rec.select import GUARDS, SELECTORS

SPLITS = ("test", "valid")
ORDERS = ("sampled", "reversed", "shuffled")
MODES = ("score", "generate")


def methods() -> tuple[str, ...]:
    """Every method name: the LLM selectors, then the references."""
    return (*SELECTORS.names(), *REFERENCES.names())


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation condition. Everything that changes a per-user record is a field here (or in
    ``params``), and every field enters the cache key except ``n_users``, which only chooses how many
    users of the seeded, prefix-stable order are evaluated."""

    dataset: str
    method: str
    k: int = 0  # demonstrations in the prompt (0 for zero-shot and the references)
    n_users: int | None = 20  # None: every eligible user
    split: str = "test"
    model: str = "smollm2-135m"
    n_candidates: int = 20
    history_len: int = 10
    seed: int = 0
    list_candidates: bool = False  # list the candidates inside the prompt (a variant, not the default)
    order: str = "sampled"  # order in which candidates are listed/scored
    mode: str = "score"  # score: log-likelihood of each title; generate: the model writes a ranked list
    max_prompt_tokens: int | None = None  # None: the model's context window
    max_new_tokens: int = 96  # generate mode
    guard: str = "held-out"  # what demonstrations may not show (lrgd.rec.select.GUARDS)
    params: Mapping[str, object] = ()  # the method's parameters (stored as sorted (name, value) pairs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", tuple(sorted(dict(self.params).items())))

    @property
    def llm(self) -> bool:
        """Whether the method is an LLM demonstration selector (else a reference ranker)."""
        return self.method in SELECTORS

    def method_object(self, profile=None):
        """The selector or reference ranker, built from ``params`` (defaults from ``profile`` where the
        class takes them from there), validated."""
        registry = SELECTORS if self.llm else REFERENCES
        return registry.build(self.method, dict(self.params), profile)

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

    def as_dict(self) -> dict:
        """The fields as a JSON-ready dict (``params`` as a dict)."""
        out = asdict(self)
        out["params"] = dict(self.params)
        return out

    def validate(self) -> EvalConfig:
        """Raise :class:`ConfigError` naming the bad field and the valid choices."""
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of {', '.join(DATASETS)}")
        if self.method not in SELECTORS and self.method not in REFERENCES:
            raise ConfigError(
                f"unknown method {self.method!r}; choose an LLM demonstration selector "
                f"({', '.join(SELECTORS)}) or a non-LLM reference ({', '.join(REFERENCES)})"
            )
        self._check_numbers()
        uses_demos = self.llm and getattr(SELECTORS.get(self.method), "demonstrations", True)
        if self.k > 0 and self.llm and not uses_demos:
            raise ConfigError(f"method {self.method!r} uses no demonstrations; got k={self.k}. Use --k 0")
        if self.k > 0 and not self.llm:
            raise ConfigError(f"{self.method} is not an LLM method and takes no demonstrations; use --k 0")
        if self.k == 0 and uses_demos:
            raise ConfigError(f"method {self.method!r} with k=0 is zero-shot; use --method zero-shot")
        for name, value, allowed in (
            ("split", self.split, SPLITS),
            ("order", self.order, ORDERS),
            ("mode", self.mode, MODES),
            ("guard", self.guard, GUARDS),
        ):
            if value not in allowed:
                raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if not self.llm and (self.list_candidates or self.mode != "score"):
            raise ConfigError(
                f"{self.method} is a non-LLM reference; list_candidates/generate apply to LLM methods"
            )
        for name, value in self.params:  # NaN and ±inf compare false with every bound: refuse them here
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        method = self.method_object()  # unknown or invalid parameters
        pool = getattr(method, "similarity_pool", None)
        if pool is not None and pool < self.k:  # it takes its k demonstrations from that many users
            raise ConfigError(
                f"--similarity-pool {pool} is smaller than --k {self.k}; raise --similarity-pool or lower --k"
            )
        return self

    def _check_numbers(self) -> None:
        """Integers where integers belong, and each within its range (the message names the option)."""
        minimum = {  # field: (CLI option, smallest allowed value, None allowed, hint)
            "k": ("--k", 0, False, ""),
            "n_users": ("--users", 1, True, " (--all-users for every eligible user)"),
            "n_candidates": ("--candidates", 2, False, " (the target and at least one negative)"),
            "history_len": ("--history", 1, False, ""),
            "seed": ("--seed", 0, False, ""),
            "max_prompt_tokens": (
                "--max-prompt-tokens",
                1,
                True,
                " (omit it for the model's context window)",
            ),
            "max_new_tokens": ("--max-new-tokens", 1, False, ""),
        }
        for f in fields(self):
            if f.name not in minimum:
                continue
            option, low, none_ok, hint = minimum[f.name]
            v = getattr(self, f.name)
            if v is None and none_ok:
                continue
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{option} must be an integer, got {v!r}")
            if v < low:
                raise ConfigError(f"{option} must be ≥ {low}{hint}, got {v}")

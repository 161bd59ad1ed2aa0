"""Compatibility re-exports of the old ``lrgd.rec.evaluate`` (split into :mod:`lrgd.metrics`,
:mod:`lrgd.rec.conditions`, :mod:`lrgd.rec.records` and :mod:`lrgd.rec.runner`).

Kept only until notebooks 02 and 03 import the new modules; new code must not import this module.
:func:`EvalConfig` here accepts the old keyword arguments ``similarity_pool``, ``effect_pool`` and
``effect_users`` and passes each to the method that declares it (ignoring it elsewhere, as before).
"""

from __future__ import annotations

from lrgd.metrics import expected_random_metrics, paired_bootstrap
from lrgd.rec.conditions import EvalConfig as _EvalConfig
from lrgd.rec.runner import Runner, choose_variant, metric_values
from lrgd.rec.select import SELECTORS

__all__ = [
    "EvalConfig",
    "Runner",
    "choose_variant",
    "expected_random_metrics",
    "metric_values",
    "paired_bootstrap",
]

_LEGACY = ("similarity_pool", "effect_pool", "effect_users")


def EvalConfig(dataset: str, method: str, k: int = 0, **kw) -> _EvalConfig:
    """:class:`lrgd.rec.conditions.EvalConfig`, taking the method parameters as the old fields."""
    legacy = {name: kw.pop(name) for name in _LEGACY if name in kw}
    declared = {p.name for p in SELECTORS.params(method)} if method in SELECTORS else set()
    params = {name: v for name, v in legacy.items() if name in declared}
    return _EvalConfig(dataset, method, k, params={**params, **dict(kw.pop("params", {}))}, **kw)

"""Tests of the runner's ``perturbed`` selector (:mod:`lrgd.robust.selectors`): identity at rate 0, what
each perturbation touches, the leakage guard on replacements, the vote reading perturbed ids, bad input."""

from __future__ import annotations

import pytest
import test_select
from test_select import select

from lrgd.errors import ConfigError
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.references import REFERENCES
from lrgd.rec.runner import Runner

leaky, twins = test_select.leaky, test_select.twins  # the module-scoped runner fixtures of test_select


def perturbed(runner: Runner, user: str, k: int, **params):
    cfg = EvalConfig("amazon-games", "perturbed", k, history_len=10, params=params).validate()
    hist = runner.target(cfg, user)[0]
    sel = runner.select(cfg, user, hist)
    return sel, runner.pool(cfg).demo_items(sel)


def base_items(runner: Runner, user: str, k: int, base: str = "recent"):
    sel = select(runner, base, user, k)
    return sel, runner.pool(EvalConfig("amazon-games", base, k)).demo_items(sel)


def users(runner: Runner) -> list[str]:
    return sorted(runner.data("amazon-games").split.test)[:12]


@pytest.mark.parametrize("name", ["flip_next", "random", "popular", "shuffle", "dropout"])
def test_rate_zero_is_the_base_selection(leaky: Runner, name: str) -> None:
    for user in users(leaky):
        sel, items = perturbed(leaky, user, 3, perturbation=name, rate=0.0)
        base, want = base_items(leaky, user, 3)
        assert items == want and sel.demos == base.demos and sel.sources == base.sources


def test_flip_next_changes_every_answer_and_nothing_else(leaky: Runner) -> None:
    st = leaky.data("amazon-games")
    for user in users(leaky):
        sel, items = perturbed(leaky, user, 3, perturbation="flip_next", rate=1.0)
        _, want = base_items(leaky, user, 3)
        assert [x[:-1] for x in items] == [x[:-1] for x in want]
        assert all(a[-1] != b[-1] for a, b in zip(items, want))
        assert [d.next_item for d in sel.demos] == [st.ds.items[x[-1]].title for x in items]


def test_random_substitution_touches_only_histories(leaky: Runner) -> None:
    changed = total = 0
    for user in users(leaky):
        _, items = perturbed(leaky, user, 3, perturbation="random", rate=0.5)
        _, want = base_items(leaky, user, 3)
        assert [x[-1] for x in items] == [x[-1] for x in want]
        for a, b in zip(items, want):
            changed += sum(x != y for x, y in zip(a[:-1], b[:-1]))
            total += len(b) - 1
    assert 0.2 < changed / total < 0.8, (changed, total)


def test_replacements_never_show_a_held_out_item(twins: Runner) -> None:
    """Twin users: substitutions and flips at rate 1 draw from the whole catalogue, which holds each
    user's valid and test items and their title twins; the guard must refuse them all."""
    st = twins.data("amazon-games")
    for name in ("random", "flip_next"):
        for user in sorted(st.split.test):
            _, items = perturbed(twins, user, 2, base="random", perturbation=name, rate=1.0)
            pool = twins.pool(EvalConfig("amazon-games", "random", 2))
            held = pool.held_out(user)
            for x in items:
                assert not set(x) & held.ids
                assert not {st.ds.items[i].title for i in x} & held.titles


def test_the_vote_counts_perturbed_answers(leaky: Runner) -> None:
    vote = REFERENCES.build("ref-vote", {"vote_selector": "perturbed", "vote_k": 3})
    cfg = EvalConfig(
        "amazon-games", "ref-vote", params={"vote_selector": "perturbed", "vote_k": 3}
    ).validate()
    for user in users(leaky)[:5]:
        hist = leaky.target(cfg, user)[0]
        nxt, _ = vote.next_items(leaky, cfg, user, hist)
        _, items = perturbed(leaky, user, 3)  # the selector's defaults: flip_next at rate 1
        assert nxt == tuple(x[-1] for x in items)


@pytest.mark.parametrize(
    ("params", "match"),
    [
        ({"perturbation": "off_domain"}, "not offered"),
        ({"perturbation": "nope"}, "not offered"),
        ({"rate": 1.5}, r"\[0, 1\]"),
        ({"base": "zero-shot"}, "not a demonstration selector"),
        ({"base": "perturbed"}, "not a demonstration selector"),
    ],
)
def test_bad_parameters_name_the_option(params: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EvalConfig("amazon-games", "perturbed", 2, params=params).validate()

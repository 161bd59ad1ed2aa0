"""lrgd.checks: the record a chapter keeps of its verifications (its doctest runs here too)."""

from __future__ import annotations

import doctest

import pytest

import lrgd.checks
from lrgd.checks import Checks


def test_docstring_examples():
    assert doctest.testmod(lrgd.checks).failed == 0


def test_direction_kind_and_failure(capsys):
    ch = Checks()
    assert ch.check("small", 1e-12, 1e-10, kind="identity") is None  # no stray True under a cell
    ch.check("large enough", 0.3, 0.5, at_least=True, fmt="{:.2f}", tfmt="{:g}")
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "small: 1.0e-12  (≤ 1e-10: yes) [identity: a sanity check of the code]",
        "large enough: 0.30  (≥ 0.5: NO)",
    ]
    assert not ch.all_passed
    assert ch.as_dict()["small"] == {
        "value": 1e-12, "threshold": 1e-10, "direction": "≤", "kind": "identity", "passed": True,
    }  # fmt: skip
    assert list(ch.table()["kind"]) == ["identity", "evidence"]
    with pytest.raises(AssertionError, match="large enough"):
        ch.assert_all()
    with pytest.raises(ValueError, match="unknown check kind"):
        ch.check("x", 0, 1, kind="proof")

"""Verifications a chapter records as it runs, and the summary table that ends the chapter.

Two kinds, kept apart on the page because they mean different things:

* ``evidence``: a measurement that could come out the other way if the claim were false (the dual's
  linear form against the real Δo, Effect_D against the true gain). Only these support a claim.
* ``identity``: a check that holds by algebra whenever the code is right (the autograd GD step equals
  the closed form; Δo = indirect + direct). It tests the *code*, not the claim, and is labelled so.

>>> ch = Checks()
>>> ch.check("GD step vs closed form", 3e-16, 1e-10, kind="identity")
GD step vs closed form: 3.0e-16  (≤ 1e-10: yes) [identity: a sanity check of the code]
>>> ch.check("ρ(Effect_D, true gain)", 0.84, 0.5, at_least=True, fmt="{:.3g}", tfmt="{:g}")
ρ(Effect_D, true gain): 0.84  (≥ 0.5: yes)
>>> ch.all_passed
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("evidence", "identity")


@dataclass
class Checks:
    """An ordered record of named checks: value, threshold, direction, kind and whether it passed."""

    rows: dict[str, dict] = field(default_factory=dict)

    def check(
        self,
        name: str,
        value: float,
        threshold: float,
        at_least: bool = False,
        kind: str = "evidence",
        fmt: str = "{:.1e}",
        tfmt: str = "{:.0e}",
    ) -> None:
        """Record ``value ≤ threshold`` (``≥`` with ``at_least``) as ``name`` and print one line.

        Returns nothing, so a check that ends a notebook cell adds no stray ``True`` to the page.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown check kind {kind!r}; choose one of {', '.join(KINDS)}")
        value = float(value)
        passed = bool(value >= threshold) if at_least else bool(value <= threshold)
        op = "≥" if at_least else "≤"
        self.rows[name] = {
            "value": value,
            "threshold": threshold,
            "direction": op,
            "kind": kind,
            "passed": passed,
            "fmt": fmt,
            "tfmt": tfmt,
        }
        note = " [identity: a sanity check of the code]" if kind == "identity" else ""
        print(
            f"{name}: {fmt.format(value)}  ({op} {tfmt.format(threshold)}: {'yes' if passed else 'NO'}){note}"
        )

    def __setitem__(self, name: str, row: dict) -> None:
        """Record a check computed elsewhere (``value``, ``threshold``, ``passed``; kind defaults to
        evidence)."""
        self.rows[name] = {"direction": "≤", "kind": "evidence", "fmt": "{:.3g}", "tfmt": "{:g}", **row}

    @property
    def all_passed(self) -> bool:
        return all(r["passed"] for r in self.rows.values())

    def as_dict(self) -> dict[str, dict]:
        """JSON-ready: value, threshold, direction, kind, passed per check."""
        keep = ("value", "threshold", "direction", "kind", "passed")
        return {n: {k: r[k] for k in keep} for n, r in self.rows.items()}

    def table(self):
        """A pandas table for the page: check, kind, value, threshold, passed (numbers formatted)."""
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "check": n,
                    "kind": r["kind"],
                    "value": r["fmt"].format(r["value"]),
                    "threshold": f"{r['direction']} {r['tfmt'].format(r['threshold'])}",
                    "passed": "yes" if r["passed"] else "NO",
                }
                for n, r in self.rows.items()
            ]
        ).set_index("check")

    def assert_all(self) -> None:
        """Fail the notebook (and nbval) when any check failed, naming the failures."""
        bad = [n for n, r in self.rows.items() if not r["passed"]]
        if bad:
            raise AssertionError(f"verification(s) failed: {', '.join(bad)}; see the table above")

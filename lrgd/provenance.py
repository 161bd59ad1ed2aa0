"""The provenance box shown on every notebook page, built from the run itself (never typed by hand)."""

from __future__ import annotations

import html
import platform
import subprocess
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata

from lrgd.config import REPO_ROOT

LIBRARIES = ("torch", "transformers", "numpy", "lrgd")


def git_commit() -> str:
    """The checked-out commit (short), with ``+dirty`` when tracked files changed; ``unknown`` off git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    out["python"] = platform.python_version()
    return out


@dataclass
class Provenance:
    """Collects what a reader needs to reproduce a page: call :meth:`finish` at the end, then show it.

    >>> prov = Provenance(profile="ci", device="cpu", seed=0)
    >>> prov.set_model("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf", "b179…")  # doctest: +SKIP
    >>> prov.finish()  # doctest: +SKIP
    """

    profile: str
    device: str
    seed: int
    dataset: str = "—"
    model: str = "—"
    model_file: str = "—"
    model_sha256: str = "—"
    commit: str = field(default_factory=git_commit)
    versions: dict[str, str] = field(default_factory=library_versions)
    started: float = field(default_factory=time.time)
    wall_s: float | None = None

    def set_model(self, name: str, file: str, sha256: str) -> None:
        self.model, self.model_file, self.model_sha256 = name, file, sha256

    def finish(self) -> Provenance:
        self.wall_s = round(time.time() - self.started, 1)
        return self

    def as_dict(self) -> dict:
        return asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        libs = ", ".join(f"{k} {v}" for k, v in self.versions.items())
        wall = "running" if self.wall_s is None else f"{self.wall_s:.1f} s"
        return [
            ("model", f"{self.model} ({self.model_file})"),
            ("model sha256", self.model_sha256),
            ("dataset", self.dataset),
            ("profile · device · seed", f"{self.profile} · {self.device} · {self.seed}"),
            ("git commit", self.commit),
            ("wall time", wall),
            ("libraries", libs),
        ]

    def _repr_html_(self) -> str:
        body = "".join(
            f"<tr><th style='text-align:left;padding-right:1em'>{html.escape(k)}</th>"
            f"<td><code>{html.escape(v)}</code></td></tr>"
            for k, v in self.rows()
        )
        return (
            "<div class='admonition note lrgd-provenance'>"
            "<p class='admonition-title'>Provenance of this page</p>"
            f"<table style='font-size:0.85em'>{body}</table></div>"
        )

    def __repr__(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.rows())

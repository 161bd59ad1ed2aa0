"""Configuration: profiles, devices, and the *only* place that reads environment variables.

Environment variables (all optional):

``LRGD_DATA_DIR``
    Folder holding one sub-folder per dataset (``amazon-games/`` ...). Searched first.
``LRGD_CACHE``
    Where converted models and trained weights are cached
    (default ``~/.cache/lrgd``, or ``$XDG_CACHE_HOME/lrgd``).
``LRGD_PROFILE``
    Default profile when a caller passes none (``ci`` unless set).

A parameter travels one way: notebook ``parameters`` cell → :func:`get_profile` → runner → model/data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from lrgd.errors import ConfigError, DataError

PROFILES = ("ci", "full", "gpu")
DEVICES = ("auto", "cpu", "cuda", "mps")

#: The repository root (the folder holding ``lrgd/``).
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Profile:
    """Sizes shared by the notebooks. ``ci`` runs in minutes on 2 CPU cores."""

    name: str
    n_random_trials: int  # random-weight checks per equivalence test
    feature_counts: tuple[int, ...]  # random-feature sizes for the kernel plot
    n_feature_seeds: int  # seeds averaged per feature count
    n_prompts: int  # real-LLM prompts (users) for the Δo study
    n_candidates: int  # candidates listed in a real prompt
    n_demos: int  # demonstrations in a real prompt


_PRESETS = {
    "ci": Profile("ci", 20, (16, 64, 256, 1024, 4096), 8, 4, 20, 2),
    "full": Profile("full", 200, (16, 32, 64, 128, 256, 512, 1024, 2048, 4096), 32, 32, 20, 2),
    "gpu": Profile("gpu", 200, (16, 32, 64, 128, 256, 512, 1024, 2048, 4096), 32, 128, 20, 2),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the preset called ``name`` (``ci`` | ``full`` | ``gpu``).

    ``None`` takes ``$LRGD_PROFILE`` or ``ci``.
    """
    name = name or os.environ.get("LRGD_PROFILE", "ci")
    if name not in _PRESETS:
        raise ConfigError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return _PRESETS[name]


def resolve_device(device: str = "auto") -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``; validate the rest."""
    import torch

    if device not in DEVICES:
        raise ConfigError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but torch sees no GPU; use device='cpu' or 'auto'")
    return device


def cache_dir() -> Path:
    """Folder for converted models and trained weights (created on demand)."""
    env = os.environ.get("LRGD_CACHE")
    if env:
        path = Path(env).expanduser()
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        path = base / "lrgd"
    path.mkdir(parents=True, exist_ok=True)
    return path


def data_roots() -> list[Path]:
    """Candidate dataset roots in search order: ``$LRGD_DATA_DIR``, ``data/``, ``../shared/data``."""
    roots = []
    env = os.environ.get("LRGD_DATA_DIR")
    if env:
        roots.append(Path(env).expanduser())
    roots.append(REPO_ROOT / "data")
    roots.append(REPO_ROOT.parent / "shared" / "data")
    return roots


def find_dataset_dir(name: str) -> Path:
    """Return the first ``<root>/<name>`` folder that exists, or raise a :class:`DataError`."""
    tried = [root / name for root in data_roots()]
    for path in tried:
        if path.is_dir():
            return path
    listing = "\n  ".join(str(p) for p in tried)
    raise DataError(
        f"dataset {name!r} not found; looked in:\n  {listing}\n"
        "Set LRGD_DATA_DIR to the folder holding it; data/README.md says where to obtain each dataset."
    )


def results_dir(profile: str) -> Path:
    """``results/<profile>/`` (created on demand)."""
    path = REPO_ROOT / "results" / get_profile(profile).name
    path.mkdir(parents=True, exist_ok=True)
    return path

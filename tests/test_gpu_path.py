"""The GPU path (``make book PROFILE=gpu DEVICE=cuda MODEL=/path``), checked on the CPU.

No GPU was available where this was written, so every test below runs the GPU path's code on the CPU:
bfloat16 (what ``dtype="auto"`` picks on cuda) against float32 on the tiny model of ``test_rank``, the
``gpu`` profile's batched scoring against the packed scoring of ``ci``, the device and dtype errors, a
local Hugging Face folder as the model, and the Makefile's wiring of ``DTYPE`` and the results grid.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lrgd.__main__ import main
from lrgd.config import DTYPES
from lrgd.errors import ConfigError
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.runner import Runner

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from nb_params import declared  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: bfloat16 keeps 8 significant bits: neighbouring bf16 numbers are 2^-7 (0.8 %) apart relative to their
#: size. Each layer rounds its activations to that grid, so a score from a bf16 forward can move by a
#: fraction of that spacing relative to the float32 score; one full spacing is the tolerance.
BF16_RTOL = 2.0**-7


def runner(root: Path, data: Path, profile: str = "ci", dtype: str = "auto") -> Runner:
    return Runner(profile, "cpu", quiet=True, results_root=root, data_dir=data, dtype=dtype)


def condition(model_dir: Path, method: str = "random", k: int = 1, **kw) -> EvalConfig:
    return EvalConfig("amazon-games", method, k, model=str(model_dir), n_candidates=10, **kw)


# ----------------------------------------------------------------------------- bfloat16 against float32


@pytest.mark.parametrize("method,k", [("zero-shot", 0), ("random", 2)])
def test_bf16_scores_are_the_float32_scores_to_bf16_precision(tmp_path, synthetic_root, model_dir, method, k):
    """One results folder, both dtypes: separate keys and files (the bf16 run reuses no float32 record),
    scores within one bf16 spacing, the target's rank unchanged for most users."""
    cfg = condition(model_dir, method, k, n_users=None)  # all 40 users
    r32 = runner(tmp_path, synthetic_root, dtype="float32")
    r16 = runner(tmp_path, synthetic_root, dtype="bfloat16")
    a, b = r32.run(cfg), r16.run(cfg)
    assert r32.key(cfg) != r16.key(cfg) and r32.paths(cfg)[1] != r16.paths(cfg)[1]
    assert b["provenance"]["computed_users"] == b["n_users"] == a["n_users"] == 40  # nothing mixed in
    assert (a["provenance"]["dtype"], b["provenance"]["dtype"]) == ("float32", "bfloat16")
    assert r16.lm(cfg.model).model.dtype == torch.bfloat16
    s32 = np.array([rec["summed"] for rec in r32.records(cfg)])
    s16 = np.array([rec["summed"] for rec in r16.records(cfg)])
    assert not np.array_equal(s32, s16)  # the bf16 run really computed in bf16
    np.testing.assert_allclose(s16, s32, rtol=BF16_RTOL)
    for variant, ranks in a["ranks"].items():
        r_32, r_16 = np.array(ranks), np.array(b["ranks"][variant])
        assert np.mean(r_32 == r_16) >= 0.8, variant  # "mostly equal": candidates' scores rarely that close
        assert np.abs(r_32 - r_16).max() <= 2, variant


def test_effect_d_and_generation_run_in_bf16(tmp_path, synthetic_root, model_dir):
    """The other LLM paths of the gpu profile in bf16: the Effect_D selector, generate mode, and chapter 3's
    §3.4 matrices (cached under a key that names the dtype)."""
    from lrgd.demos import effect_study as es

    mats, keys = {}, {}
    for dtype in ("float32", "bfloat16"):
        r = runner(tmp_path, synthetic_root, "gpu", dtype)
        eff = r.run(condition(model_dir, "effect", 1, n_users=4, params={"effect_pool": 4}))
        gen = r.run(condition(model_dir, "zero-shot", 0, n_users=2, mode="generate", max_new_tokens=6))
        assert eff["n_users"] == 4 and gen["n_users"] == 2 and eff["provenance"]["dtype"] == dtype
        lm, data = r.lm(str(model_dir)), r.data("amazon-games")
        pairs = es.llm_pairs(lm, data.ds, data.split, 4, 4, 0)
        mats[dtype] = es.llm_matrices(lm.model, pairs, 1)
        keys[dtype] = es.matrices_key(pairs, lm, "amazon-games", data.fingerprint, "cpu", 0)
    assert keys["float32"] != keys["bfloat16"]
    e32, e16 = mats["float32"]["Effect_D"], mats["bfloat16"]["Effect_D"]
    assert np.isfinite(e16).all() and e16.shape == (4, 4)
    assert np.corrcoef(e32.ravel(), e16.ravel())[0, 1] > 0.95  # Effect_D's math is float64 on bf16 states


# ----------------------------------------------------------------------------- the gpu profile's scoring


def test_the_gpu_profiles_batched_scoring_is_the_packed_scoring(tmp_path, synthetic_root, model_dir):
    """gpu: ``batched`` with 8192 positions per forward; ci: ``packed`` with 1024. Same prompts, same
    float32 model: the same scores to 1e-5, the same ranks; the keys differ (the numerics are in them)."""
    gpu = runner(tmp_path, synthetic_root, "gpu", "float32")
    ci = runner(tmp_path, synthetic_root, "ci", "float32")
    assert (gpu.preset.score_mode, gpu.preset.score_tokens) == ("batched", 8192)
    assert ci.preset.score_mode == "packed"
    cfg = condition(model_dir, "random", 2, n_users=12)
    users = ci.users(cfg)
    cands = ci.candidates(cfg, users, save=False)
    for u in users:
        up_gpu, up_ci = gpu.user_prompt(cfg, u, cands[u]), ci.user_prompt(cfg, u, cands[u])
        assert torch.equal(up_gpu.prompt.input_ids, up_ci.prompt.input_ids)
        s_gpu, s_ci = gpu.prompt_scores(cfg, up_gpu), ci.prompt_scores(cfg, up_ci)
        np.testing.assert_allclose(s_gpu.summed, s_ci.summed, rtol=0, atol=1e-5)
        np.testing.assert_allclose(gpu.null_scores(cfg, up_gpu.titles), ci.null_scores(cfg, up_ci.titles),
                                   rtol=0, atol=1e-5)  # fmt: skip
    assert gpu.run(cfg)["ranks"] == ci.run(cfg)["ranks"]
    assert gpu.key(cfg) != ci.key(cfg)


def test_dtype_auto_is_bfloat16_on_cuda_and_float32_elsewhere(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Runner("gpu", "cuda").dtype == "bfloat16" and Runner("gpu", "auto").dtype == "bfloat16"
    assert Runner("gpu", "cuda", dtype="float32").dtype == "float32"  # an explicit dtype wins
    assert Runner("gpu", "cpu").dtype == "float32"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Runner("gpu", "auto").dtype == "float32"  # no GPU: auto is the CPU, in float32


# ----------------------------------------------------------------------------- errors: one line each


def test_cuda_without_a_gpu_is_one_line(tmp_path, monkeypatch, capsys, synthetic_root, model_dir):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as exc:
        Runner("gpu", "cuda", dtype="bfloat16")
    msg = str(exc.value)
    assert "\n" not in msg and "device 'cuda' requested but torch sees no GPU" in msg
    args = ["evaluate", "--dataset", "amazon-games", "--method", "zero-shot", "--users", "2",
            "--profile", "gpu", "--device", "cuda", "--model", str(model_dir),
            "--data-dir", str(synthetic_root), "--results-dir", str(tmp_path / "res")]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: device 'cuda' requested") and "\n" not in err
    assert not (tmp_path / "res").exists() or not any((tmp_path / "res").rglob("*.json*"))


@pytest.mark.parametrize("bad", ["bf16", "int8", "FLOAT32", ""])
def test_a_bad_dtype_is_one_line_naming_the_valid_ones(bad, tmp_path, capsys, synthetic_root, model_dir):
    with pytest.raises(ConfigError) as exc:
        Runner("gpu", "cpu", dtype=bad)
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"unknown dtype {bad!r}")
    assert msg.endswith("choose one of " + ", ".join(DTYPES))
    assert {"auto", "float32", "bfloat16"} <= set(DTYPES)
    args = ["evaluate", "--dataset", "amazon-games", "--method", "zero-shot", "--users", "2", "--dtype", bad,
            "--model", str(model_dir), "--data-dir", str(synthetic_root),
            "--results-dir", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    assert capsys.readouterr().err == f"error: {msg}\n" and not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- the recipe but the device


def test_the_gpu_recipe_with_a_local_model_folder(tmp_path, capsys, synthetic_root, model_dir):
    """PROFILE=gpu MODEL=<folder> DTYPE=bfloat16 (what auto picks on cuda) on the CPU: all users, batched
    scoring, the folder's weights in the key and the provenance, a second run (library, then
    ``python -m lrgd evaluate --dtype bfloat16``) served from the records."""
    r = runner(tmp_path, synthetic_root, "gpu", "bfloat16")
    assert r.preset.n_users is None  # the gpu profile takes every eligible user
    cfg = condition(model_dir, "random", 1, n_users=r.preset.n_users)
    res = r.run(cfg)
    assert res["n_users"] == res["n_eligible"] == 40 and res["provenance"]["dtype"] == "bfloat16"
    assert res["provenance"]["model"] == str(model_dir) and r.paths(cfg)[1].is_file()
    assert all(0 <= m["mean"] <= 1 for ms in res["metrics"].values() for m in ms.values())
    again = runner(tmp_path, synthetic_root, "gpu", "bfloat16").run(cfg)
    assert again["provenance"]["computed_users"] == 0 and again["ranks"] == res["ranks"]
    # the command line's --dtype reaches the key: the same condition is served from these records
    args = ["evaluate", "--profile", "gpu", "--device", "cpu", "--dtype", "bfloat16",
            "--dataset", "amazon-games", "--method", "random", "--k", "1", "--all-users",
            "--candidates", "10", "--model", str(model_dir),
            "--data-dir", str(synthetic_root), "--results-dir", str(tmp_path), "--quiet"]  # fmt: skip
    assert main(args) == 0
    assert "40 users · 0 computed" in capsys.readouterr().out


# ----------------------------------------------------------------------------- notebooks and Makefile


def test_every_notebook_that_runs_an_llm_chooses_its_dtype():
    """A notebook that builds a Runner or loads an LLM declares ``dtype`` and passes a dtype to every such
    call (the parameter, or one derived from it), or (chapter 1: float32 tolerances) passes a fixed float
    dtype to each and does not declare it; never the library's default by omission."""
    seen = 0
    for nb in sorted((ROOT / "notebooks").glob("*.py")):
        body = nb.read_text(encoding="utf-8").split('tags=["parameters"]', 1)[1]
        calls = re.findall(r"\b(?:Runner|load_model)\((.*)\)", body)
        if not calls:
            continue
        seen += 1
        names = declared(nb)
        assert "device" in names, nb.name
        if "dtype" in names:
            assert all(re.search(r"\bdtype=\w*dtype\b", c) for c in calls), f"{nb.name}: {calls}"
        else:
            fixed = all(re.search(r'\bdtype="float(32|64)"', c) for c in calls)
            assert fixed, f"{nb.name} calls {calls}: declare a dtype parameter and pass it, or fix one"
    assert seen >= 5  # chapters 1, 2, 2b, 3, 4


def make_tree(tmp_path: Path) -> Path:
    """The Makefile with the notebooks and scripts it reads, plus a stand-in chapter 6 if it is missing."""
    for name in ("Makefile", "requirements.txt", "requirements-nodeps.txt", "pyproject.toml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "scripts", tmp_path / "scripts")
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "lrgd").mkdir()
    six = tmp_path / "notebooks" / "06_results.py"
    if not six.exists():
        six.write_text('# %% tags=["parameters"]\nprofile = "ci"\ndtype = "auto"\nseed = 0\n')
    return tmp_path


def test_make_plans_the_grid_before_chapter_6_and_make_grid_runs_it(tmp_path):
    """``make book PROFILE=full`` prints the grid's dry run right before chapter 6 executes (and before no
    other chapter; not at ci, where chapter 6 computes nothing); ``make grid`` passes the profile, device,
    dtype and an optional scheduler."""
    tree = make_tree(tmp_path)
    ci = subprocess.run(["make", "-n", "-B", "notebooks", "PROFILE=ci", "BIN=.venv/bin"], cwd=tree,
                        capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "notebooks/06_results.py" in ci and "lrgd grid" not in ci
    vals = ["PROFILE=full", "DEVICE=cuda", "DTYPE=bfloat16", "BIN=.venv/bin"]
    out = subprocess.run(["make", "-n", "-B", "notebooks", *vals], cwd=tree, capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    plan = ".venv/bin/python -m lrgd grid --profile full --device cuda --dtype bfloat16 --dry-run"
    at = [i for i, line in enumerate(out) if line == plan]
    assert len(at) == 1
    executes = [i for i, line in enumerate(out) if "nb_params.py notebooks/" in line]
    nxt = min(i for i in executes if i > at[0])
    assert "notebooks/06_results.py" in out[nxt]
    vals = ["PROFILE=gpu", "DEVICE=cuda", "SCHEDULER=tcp://h:8786", "BIN=.venv/bin"]
    grid = subprocess.run(["make", "-n", "grid", *vals], cwd=tree, capture_output=True, text=True, check=True)
    run = ".venv/bin/python -m lrgd grid --profile gpu --device cuda --dtype auto --scheduler tcp://h:8786"
    assert run in grid.stdout.splitlines()

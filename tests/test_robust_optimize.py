"""The two-stage optimiser on real-data prompts (lrgd.robust.runner_objective), the ``optimized`` selector and
``python -m lrgd optimize``: the objective is the runner's own score, the leakage guard drops and counts,
the file's content enters the runner's key, bad files and flags give one line, and a run killed with
SIGKILL resumes to the identical file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_rank import tiny_model_folder

from lrgd.__main__ import main
from lrgd.config import ReaderSizes
from lrgd.errors import ConfigError
from lrgd.models import reader as R
from lrgd.rec.data import make_synthetic, write_synthetic
from lrgd.rec.rank import target_rank
from lrgd.rec.runner import Runner
from lrgd.robust import optimise as opt
from lrgd.robust import runner_objective as ro

pytestmark = pytest.mark.usefixtures("one_thread")

DATASET = "amazon-games"  # the synthetic data is written in this dataset's format
MODEL = "trained:reader-anon"
TINY = replace(ReaderSizes(), hidden=32, layers=2, heads=2, intermediate=64, titles=False, threads=1)
SPEC = ro.OptimizeSpec(DATASET, MODEL, k=2, n_pool=8, n_valid_users=8, n_test_users=6, max_iters=3,
                       max_moves=6, patience=1, n_candidates=10)  # fmt: skip

#: the tiny reader patched into a runner (also run by the CLI subprocess, so it is source text)
PATCH = """
import torch
from dataclasses import replace
from lrgd.config import ReaderSizes
from lrgd.models import reader as R
from lrgd.rec.runner import Runner
TINY = replace(ReaderSizes(), hidden=32, layers=2, heads=2, intermediate=64, titles=False, threads=1)
torch.manual_seed(0)
MODEL_OBJ = R.Reader(TINY).eval()
Runner.trained = lambda self, name: R.Trained(MODEL_OBJ, None, {})
Runner.model_source = lambda self, name: ("tiny.pt", "tiny")
Runner.reader_sizes = lambda self, name: TINY
"""


def write_data(root: Path) -> Path:
    write_synthetic(
        make_synthetic(n_users=60, n_items=50, seed=3, min_len=5, max_len=9), root / DATASET, DATASET
    )
    return root


def patched_runner(data: Path, results: Path) -> Runner:
    r = Runner("ci", "cpu", quiet=True, results_root=results, data_dir=data)
    torch.manual_seed(0)
    model = R.Reader(TINY).eval()
    r.trained = lambda name: R.Trained(model, None, {})
    r.model_source = lambda name: ("tiny.pt", "tiny")
    r.reader_sizes = lambda name: TINY
    return r


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def runner(data, tmp_path_factory) -> Runner:
    return patched_runner(data, tmp_path_factory.mktemp("res"))


def objective(runner: Runner, split: str = "valid", spec=SPEC, sources=None):
    train, hold, test = ro.split_users(runner, spec)
    users = [*train, *hold] if split == "valid" else test
    if sources is None:
        sources = ro.draw_pool(runner.pool(spec.cfg(split)), spec.n_pool, spec.seed, [*train, *hold, *test])
    return ro.RunnerObjective(runner, spec, split, users, sources), sources


def demos_file(runner: Runner, path: Path, sources, spec=SPEC) -> Path:
    return ro.write_demos(path, ro.demos_document(runner, spec, sources, "test"))


# ----------------------------------------------------------------------------- the objective


def test_set_loss_is_the_runners_own_score(runner, tmp_path) -> None:
    """Hand check: for each validation user, set_loss of a set equals −log softmax of the target under the
    scores lrgd.models.reader.score gives for the runner's prompt with the optimized selector on a file
    holding that set; and the ranks the runner records follow the same scores."""
    obj, sources = objective(runner)
    chosen = [3, 0]
    path = demos_file(runner, tmp_path / "d.json", [sources[i] for i in chosen])
    cfg = SPEC.cfg("valid", "optimized", 2, demos=str(path))
    cfg = cfg.validate()  # n_users None: every validation user, ours among them
    loss = obj.set_loss(np.arange(len(obj.users)), np.tile(chosen, (len(obj.users), 1)))
    model, cat = runner.trained(MODEL).model, runner.catalogue(DATASET, False)
    cands = runner.candidates(cfg, obj.users)
    for u, user in enumerate(obj.users):
        hist, target = runner.target(cfg, user)
        cand = runner.ordered(cfg, user, cands[user])
        sel = runner.select(cfg, user, hist)
        seed = zlib.crc32(f"{cfg.seed}|tags|{user}".encode())
        s = R.score(model, cat, runner.demo_ids(cfg, sel), hist, cand, TINY, seed)
        want = -(torch.log_softmax(torch.tensor(s, dtype=torch.float64), 0)[cand.index(target)]).item()
        assert loss[u] == pytest.approx(want, abs=1e-5)
    res = runner.run(cfg)
    recs = {r["user"]: r for r in runner.records(cfg)}
    assert res["n_users"] >= len(obj.users)
    for u, user in enumerate(obj.users):
        cand, ss, label = obj.scores(u, obj.selection(u, chosen))
        assert recs[user]["rank"]["score"] == target_rank(ss, cand, cand[label], user, cfg.seed)


def test_an_llm_goes_through_the_same_code(data, tmp_path) -> None:
    """The same objective on an LLM (a tiny random Llama folder, as SmolLM2 would be): each loss is −log
    softmax of the summed log-probabilities the runner records for the optimized selector's prompt."""
    model = str(tiny_model_folder(tmp_path / "tiny"))
    spec = replace(SPEC, model=model, n_valid_users=4, n_test_users=0, n_candidates=6, history_len=3)
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "res", data_dir=data)
    obj, sources = objective(r, spec=spec)
    path = demos_file(r, tmp_path / "d.json", sources[:2], spec)
    loss = obj.set_loss(np.arange(4), np.tile([0, 1], (4, 1)))
    cfg = replace(spec.cfg("valid", "optimized", 2, demos=str(path)), n_users=4).validate()
    r.run(cfg)  # no test users set aside: the runner's first 4 validation users are the objective's
    recs = {x["user"]: x for x in r.records(cfg)}
    for u, user in enumerate(obj.users):
        rec = recs[user]
        s = torch.tensor(rec["summed"], dtype=torch.float64)
        want = -torch.log_softmax(s, 0)[rec["candidates"].index(rec["target"])].item()
        assert loss[u] == pytest.approx(want, abs=1e-4)  # the records round to 5 decimals


def test_the_leakage_guard_drops_and_counts(runner) -> None:
    """A demonstration from the user's own sequence is dropped from that user's prompt (loss = the set
    without it) and counted; other users keep it."""
    obj, sources = objective(runner)
    user = obj.users[0]
    own = next(c for c in range(1, 9) if runner.pool(SPEC.cfg("valid")).make(user, c) is not None)
    srcs = [*sources, (user, own)]
    obj2, _ = objective(runner, sources=srcs)
    m = len(sources)
    sel = obj2.selection(0, [m, 1])
    assert sel.guarded == 1 and sel.sources == (tuple(sources[1]),)
    with_own = obj2.set_loss(np.array([0]), np.array([[m, 1]]))[0]
    assert obj2.guarded == 1
    assert with_own == pytest.approx(obj2.set_loss(np.array([0]), np.array([[1]]))[0], abs=1e-9)
    other = obj2.selection(1, [m, 1])
    assert other.guarded == 0 and len(other.sources) == 2


# ----------------------------------------------------------------------------- the selector and its file


def test_the_runner_key_follows_the_files_content(runner, tmp_path) -> None:
    """Same path, other demonstrations → another key; the same content at another path keeps the set."""
    _, sources = objective(runner)
    path = demos_file(runner, tmp_path / "d.json", sources[:2])
    cfg = SPEC.cfg("test", "optimized", 2, demos=str(path))
    key = runner.key(cfg)
    assert runner.key(cfg) == key
    demos_file(runner, path, sources[2:4])
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    assert runner.key(cfg) != key
    user = runner.users(cfg)[0]
    sel = runner.select(cfg, user, runner.target(cfg, user)[0])
    assert [tuple(s) for s in sel.sources] == [tuple(s) for s in sources[2:4] if s[0] != user]


def _error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.mark.parametrize(
    ("content", "match"),
    [(None, "cannot read it"), ("{not json", "cannot read it"),
     ('{"format": "x"}', "not a demonstration file"), ("EDITED", "does not match its sha256")],
)  # fmt: skip
def test_bad_demonstration_files_give_one_line(runner, data, tmp_path, capsys, content, match) -> None:
    path = tmp_path / "demos.json"
    if content == "EDITED":
        _, sources = objective(runner)
        doc = json.loads(demos_file(runner, path, sources[:2]).read_text())
        doc["demos"][0]["items"][0] = "999"
        path.write_text(json.dumps(doc))
    elif content is not None:
        path.write_text(content)
    argv = ["evaluate", "--dataset", DATASET, "--method", "optimized", "--k", "2", "--demos", str(path),
            "--data-dir", str(data), "--results-dir", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    line = _error_line(capsys, argv)
    assert match in line and str(path) in line and "python -m lrgd optimize" in line
    assert not (tmp_path / "r").exists()  # nothing written


def test_another_dataset_or_k_is_refused_before_anything_runs(runner, data, tmp_path, capsys) -> None:
    _, sources = objective(runner)
    path = demos_file(runner, tmp_path / "d.json", sources[:2])
    base = ["evaluate", "--method", "optimized", "--demos", str(path), "--data-dir", str(data),
            "--results-dir", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    line = _error_line(capsys, [*base, "--dataset", DATASET, "--k", "3"])
    assert "k=2, not 3" in line and "--k 2" in line
    line = _error_line(capsys, [*base, "--dataset", "ml-100k", "--k", "2"])
    assert f"dataset={DATASET}, not ml-100k" in line
    with pytest.raises(ConfigError, match="--demos-sha256"):
        SPEC.cfg("test", "optimized", 2, demos=str(path), demos_sha256="0" * 64).validate()
    assert not (tmp_path / "r").exists()


def test_bad_optimize_flags_give_one_line(data, tmp_path, capsys) -> None:
    base = ["optimize", "--dataset", DATASET, "--out", str(tmp_path / "o.json"), "--data-dir", str(data)]
    assert "--k 5 must be smaller than --pool 4" in _error_line(capsys, [*base, "--k", "5", "--pool", "4"])
    assert "--max-moves must be ≥ 1" in _error_line(capsys, [*base, "--max-moves", "0"])
    assert "unknown guard" in _error_line(capsys, [*base, "--guard", "none"])
    assert "unknown dataset" in _error_line(capsys, ["optimize", "--dataset", "x", "--out", "o.json"])
    assert not (tmp_path / "o.json").exists()


# ----------------------------------------------------------------------------- resuming


class _Quadratic:
    """A toy SetObjective: loss(u, S) = Σ_j (w[u, S_j] · (j + 1)) — order matters, sets differ."""

    def __init__(self, n_pool: int = 12, n_users: int = 10) -> None:
        self.n_pool = n_pool
        self.w = np.random.default_rng(0).normal(size=(n_users, n_pool))

    def set_loss(self, users, sets):
        sets = np.asarray(sets)
        return (self.w[np.asarray(users)[:, None], sets] * np.arange(1, sets.shape[1] + 1)).sum(1)


@pytest.mark.parametrize("guard", [True, False])
def test_refine_resumes_from_any_iteration_to_the_same_result(guard: bool) -> None:
    obj, states = _Quadratic(), []
    kw = dict(max_iters=6, max_moves=7, seed=3, patience=1 if guard else None, keep_best=guard)
    whole = opt.refine(
        obj, np.array([0, 1, 2]), np.arange(5), np.arange(5, 10), on_iteration=states.append, **kw
    )
    assert len(states) >= 3 and states[-1]["done"]
    for st in states[:-1]:
        again = opt.refine(obj, np.array([0, 1, 2]), np.arange(5), np.arange(5, 10),
                           state=json.loads(json.dumps(st)), **kw)  # fmt: skip
        for field in ("best", "sets", "train_loss", "holdout_loss", "evals"):
            assert np.array_equal(getattr(again, field), getattr(whole, field)), field
        assert (again.best_iter, again.stopped_by) == (whole.best_iter, whole.stopped_by)
    with pytest.raises(ConfigError, match="another start set"):
        opt.refine(obj, np.array([0, 1, 3]), np.arange(5), np.arange(5, 10), state=states[1], **kw)


def _argv(data: Path, res: Path, out: Path, *extra: str) -> list[str]:
    return ["optimize", "--dataset", DATASET, "--model", MODEL, "--out", str(out), "--k", "2", "--pool", "8",
            "--valid-users", "8", "--test-users", "6", "--max-iters", "4", "--max-moves", "6", "--quiet",
            "--data-dir", str(data), "--results-dir", str(res), *extra]  # fmt: skip


def _run_cli(data: Path, res: Path, out: Path, slow: float, *extra: str) -> subprocess.Popen:
    """``python -c`` running the CLI's main with the tiny reader, each scoring call slowed by ``slow`` s."""
    script = (
        PATCH
        + f"""
import sys, time
import lrgd.robust.runner_objective as ro
torch.set_num_threads(1)
_orig = ro.RunnerObjective._losses
ro.RunnerObjective._losses = lambda self, keys: (time.sleep({slow}), _orig(self, keys))[1]
from lrgd.__main__ import main
sys.exit(main(sys.argv[1:]))
"""
    )
    return subprocess.Popen([sys.executable, "-c", script, *_argv(data, res, out, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def test_sigkill_resume_gives_the_identical_file(data, tmp_path, monkeypatch, capsys) -> None:
    """The CLI killed with SIGKILL once its state shows a stage-2 iteration, then rerun, writes the same
    demonstration file (byte for byte) as a run that was never interrupted; other arguments are refused."""
    for name in ("trained", "model_source", "reader_sizes"):  # restored after the test
        monkeypatch.setattr(Runner, name, getattr(Runner, name))
    exec(PATCH, {})  # the subprocesses' tiny reader in this process, for the uninterrupted run
    whole = tmp_path / "whole.json"
    assert main(_argv(data, tmp_path / "r1", whole, "--no-guard")) == 0
    out = tmp_path / "killed.json"
    state = Path(str(out) + ".state.json")
    p = _run_cli(data, tmp_path / "r2", out, 0.15, "--no-guard")
    t0 = time.time()
    while time.time() - t0 < 120:
        try:
            it = json.loads(state.read_text())["state"]["search"]["iteration"]
        except (OSError, ValueError, KeyError):
            it = 0
        if it >= 1 or p.poll() is not None:
            break
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed; raise the sleep"
    os.kill(p.pid, signal.SIGKILL)
    p.wait(10)
    assert not out.exists() and json.loads(state.read_text())["state"]["search"]["iteration"] >= 1
    p = _run_cli(data, tmp_path / "r2", out, 0.0, "--no-guard")
    assert p.wait(120) == 0, p.stderr.read()
    assert "resuming from" in p.stderr.read()
    assert out.read_bytes() == whole.read_bytes()
    capsys.readouterr()
    line = _error_line(capsys, _argv(data, tmp_path / "r2", out))  # guarded: other arguments
    assert "other arguments (spec differ)" in line and "--restart" in line
    assert main(_argv(data, tmp_path / "r2", out, "--restart")) == 0
    assert json.loads(out.read_text())["method"] == "two-stage"  # the guarded run replaced it
    line = _error_line(capsys, _argv(data, tmp_path / "r2", whole / "o.json"))  # under a file
    assert "cannot write" in line and str(whole) in line


def test_the_pool_covers_popular_items_and_never_the_evaluated_users(runner) -> None:
    pool = runner.pool(SPEC.cfg("valid"))
    train, hold, test = ro.split_users(runner, SPEC)
    excl = [*train, *hold, *test]
    a = ro.draw_pool(pool, 10, 0, excl)
    assert a == ro.draw_pool(pool, 10, 0, excl) and a != ro.draw_pool(pool, 10, 1, excl)
    assert len(set(a)) == 10 and not {src for src, _ in a} & set(excl)
    assert not set(test) & {*train, *hold}  # test users never choose
    seq = pool.split.train
    anchors = [seq[u][c - 1] for u, c in a[:5]]  # the first half: right after the most popular items
    pop = pool.popularity
    top = sorted({seq[u][c - 1] for u in seq if u not in excl for c in range(1, len(seq[u]))},
                 key=lambda i: (-pop[i], i))[:5]  # fmt: skip
    assert anchors == top


def test_the_two_stage_selector_is_the_optimize_commands_set(data, tmp_path, capsys) -> None:
    """``--method two-stage`` optimises on first use with the sizes in its parameters and shows the same set
    as ``python -m lrgd optimize`` with those sizes (same demonstrations, same per-user ranks as
    ``optimized`` on that file); its file under results/<profile>/optimized/ serves a second runner, which
    optimises nothing; test users beyond ``test_users`` are refused in one line."""
    params = {"pool": 8, "valid_users": 8, "test_users": 6, "max_iters": 3, "max_moves": 6, "patience": 1}
    spec = replace(SPEC, max_iters=3, max_moves=6, patience=1)
    first = patched_runner(data, tmp_path / "res")
    cfg = replace(spec.cfg("test", "two-stage", 2, **params), n_users=6).validate()
    res = first.run(cfg)
    (written,) = (tmp_path / "res" / "ci" / "optimized" / DATASET).glob("two-stage-*.json")
    doc = ro.read_demos(written)
    assert (
        doc["k"] == 2
        and doc["method"] == "two-stage"
        and doc["config"] == json.loads(json.dumps(spec.__dict__))
    )

    ro.optimise_to_file(patched_runner(data, tmp_path / "res2"), spec, tmp_path / "cli.json")
    cli = ro.read_demos(tmp_path / "cli.json")
    assert ro.file_demos(cli) == ro.file_demos(doc)  # the optimize command's set
    other = patched_runner(data, tmp_path / "res")
    other_cfg = replace(
        spec.cfg("test", "optimized", 2, demos=str(tmp_path / "cli.json")), n_users=6
    ).validate()
    assert other.run(other_cfg)["ranks"] == res["ranks"]  # the same prompts, the same ranks

    again = patched_runner(data, tmp_path / "res")
    again.trained = None  # would fail if the set were optimised again (the file serves it)
    assert ro.file_demos(again.memo(("probe",), lambda: ro.optimised_document(again, spec))) == ro.file_demos(
        doc
    )

    wide = replace(cfg, n_users=7)
    with pytest.raises(ConfigError, match=r"--users ≤ 6"):
        first.run(wide)


@pytest.mark.parametrize("profile", ["ci", "full", "gpu"])
def test_each_profile_fits_the_real_optimiser_into_its_dataset(profile, tmp_path) -> None:
    """§4.8 at each profile splits the real dataset's users into test users, validation users and the
    sources of its pool without running short (found at ``full``: 1000 test users asked of ml-100k's 943
    left no validation users). Needs the real data; skipped without it."""
    from lrgd.config import get_profile
    from lrgd.errors import DataError
    from lrgd.robust import real

    prof = get_profile(profile)
    spec = real.spec_for(prof)
    runner = Runner(profile, "cpu", quiet=True, results_root=tmp_path)
    try:
        train, hold, test = ro.split_users(runner, spec)
    except DataError as e:
        pytest.skip(f"no {spec.dataset} data here: {e}")
    assert (len(train) + len(hold), len(test)) == (spec.n_valid_users, spec.n_test_users)
    sources = ro.draw_pool(runner.pool(spec.cfg("valid")), spec.n_pool, spec.seed, [*train, *hold, *test])
    assert len(sources) == spec.n_pool

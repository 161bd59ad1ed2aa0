"""Tests of the results grid's execution (:func:`lrgd.grid.run_grid`) and of ``python -m lrgd grid``:

* a dask ``LocalCluster`` of two worker processes publishes the summaries a sequential run publishes
  (same files, so same keys; identical ranks and metrics), and a second run sends nothing;
* a failing task is named in one line, the others are published, and one error sums them up;
* the command's dry run counts published and missing tasks; bad flags end in one line and exit 2;
* the grid of each profile is consistent (paired test rows, valid tasks on validation users, no duplicate).

The cluster test opens local TCP sockets (dask's scheduler), hence ``enable_socket`` under ``make unit``'s
``--disable-socket``; it takes about 25 s on two busy cores (mostly worker start-up and imports).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import lrgd.grid as grid
from lrgd.__main__ import main
from lrgd.config import PROFILES, get_profile
from lrgd.errors import ConfigError, DataError
from lrgd.grid import KINDS, GridTask, grid_tasks, run_grid
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import make_synthetic, write_synthetic
from lrgd.rec.runner import Runner

pytestmark = pytest.mark.usefixtures("one_thread")
GRID_DATASETS = get_profile("ci").grid.datasets


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A small synthetic copy of every dataset of the ci grid (amazon-games a little larger)."""
    root = tmp_path_factory.mktemp("data")
    for i, name in enumerate(GRID_DATASETS):
        n_users = 40 if name == "amazon-games" else 15
        ds = make_synthetic(n_users=n_users, n_items=60, seed=1 + i, min_len=4, max_len=9)
        write_synthetic(ds, root / name, name)
    return root


def llm(model_dir: Path, method: str, k: int) -> GridTask:
    cfg = EvalConfig("amazon-games", method, k, n_users=6, model=str(model_dir), n_candidates=10)
    return GridTask(cfg, "test", "llm")


def ref(method: str, dataset: str = "amazon-games", **kw) -> GridTask:
    return GridTask(EvalConfig(dataset, method, n_users=6, **{"n_candidates": 10, **kw}), "test", "reference")


#: fails on the worker when it runs (1000 candidates from 60 items); keyed fine
TOO_MANY = ref("ref-bm25", n_candidates=1000)
#: fails here when keyed (the dataset is not in the data folder)
NO_DATA = ref("ref-popularity", dataset="amazon-scientific")


def tiny_grid(model_dir: Path) -> list[GridTask]:
    """One LLM task (with demonstrations) and two references: one worker loads transformers, not both."""
    return [llm(model_dir, "random", 1), ref("ref-popularity"), ref("ref-markov")]


def published(root: Path) -> dict[str, dict]:
    """Published file name → its ranks and metrics (what a table reads)."""
    return {
        p.name: {k: json.loads(p.read_text())[k] for k in ("ranks", "metrics")}
        for p in sorted((root / "ci" / "grid").rglob("*.json"))
    }


def forbidden(*args, **kwargs):
    raise AssertionError("computed in the test process")


def failed_labels(err: str) -> list[str]:
    """The task labels of the ``failed: <label>: <error>`` lines, sorted."""
    return sorted(line.split(": ")[1] for line in err.splitlines() if line.startswith("failed: "))


# ----------------------------------------------------------------------------- execution


@pytest.mark.enable_socket
def test_a_local_cluster_publishes_what_the_sequential_run_does(
    tmp_path, data_root, model_dir, monkeypatch, capfd
) -> None:
    tasks = tiny_grid(model_dir)
    kw = dict(device="cpu", data_dir=data_root, progress=False)
    seq_root, dask_root = tmp_path / "sequential", tmp_path / "cluster"
    with pytest.raises(DataError):
        run_grid("ci", [*tasks, TOO_MANY, NO_DATA], workers=0, results_root=seq_root, **kw)
    capfd.readouterr()

    # the cluster path: nothing may be computed in this process (workers are other processes)
    monkeypatch.setattr(Runner, "run", forbidden)
    with pytest.raises(DataError, match=r"^2 of 5 grid tasks failed .*the others are published") as exc:
        run_grid("ci", [*tasks, TOO_MANY, NO_DATA], workers=2, threads=1, results_root=dask_root, **kw)
    err = capfd.readouterr().err
    assert failed_labels(err) == sorted([TOO_MANY.label, NO_DATA.label])
    assert "Traceback" not in err and "lower --candidates" in err  # the worker's error, as one line
    assert exc.value.__cause__ is None  # nothing chained from a worker

    seq, clu = published(seq_root), published(dask_root)
    assert len(seq) == len(tasks) and clu == seq  # same file names (keys), identical ranks and metrics

    # a second run sends nothing: no cluster is started, no file is rewritten
    stamps = {p: p.stat().st_mtime_ns for p in (dask_root / "ci" / "grid").rglob("*.json")}
    monkeypatch.setattr(grid, "_local_client", forbidden)
    again = run_grid("ci", tasks, workers=2, results_root=dask_root, **kw)
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    as_text = lambda ss: sorted(json.dumps([s["ranks"], s["metrics"]], sort_keys=True) for s in ss)  # noqa: E731
    assert len(again) == len(tasks) and as_text(again) == as_text(clu.values())  # what it returns: the files


def test_failures_are_named_one_per_line_and_summed_up(tmp_path, data_root, capsys) -> None:
    bad_k = GridTask(EvalConfig("amazon-games", "zero-shot", 2, n_users=6), "test", "llm")  # zero-shot, k=2
    good = ref("ref-popularity")
    with pytest.raises(ConfigError, match=r"^3 of 4 grid tasks failed \(each named above; first: ") as exc:
        run_grid("ci", [bad_k, good, TOO_MANY, NO_DATA], workers=0, results_root=tmp_path, data_dir=data_root)
    err = capsys.readouterr().err
    assert failed_labels(err) == sorted([bad_k.label, TOO_MANY.label, NO_DATA.label])
    assert "uses no demonstrations" in err and "Traceback" not in err
    assert type(exc.value) is ConfigError  # mixed families (config, data) → ConfigError
    assert "uses no demonstrations" in str(exc.value.__cause__)  # sequential: the first run failure, chained
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=data_root)
    assert list(published(tmp_path)) == [grid.published_path(runner, good.cfg).name]  # the others went on


def test_the_scheduler_address_comes_from_the_argument_or_the_environment(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LRGD_SCHEDULER", "not an address")
    with pytest.raises(ConfigError, match=r"^LRGD_SCHEDULER='not an address' is not a dask scheduler"):
        run_grid("ci", [], results_root=tmp_path)
    with pytest.raises(ConfigError, match=r"^--scheduler='nowhere' is not"):
        run_grid("ci", [], scheduler="nowhere", results_root=tmp_path)
    assert run_grid("ci", [], workers=0, results_root=tmp_path) == []  # workers=0: here, whatever the env
    with pytest.raises(ConfigError, match="--workers must be an integer ≥ 0"):
        run_grid("ci", [], workers=-1, results_root=tmp_path)


# ----------------------------------------------------------------------------- the command line


def test_dry_run_counts_published_and_missing(tmp_path, data_root, capsys) -> None:
    args = ["grid", "--profile", "ci", "--dry-run", "--only-kind", "reference", "--device", "cpu",
            "--results-dir", str(tmp_path), "--data-dir", str(data_root)]  # fmt: skip
    refs = [t for t in grid_tasks("ci") if t.kind == "reference"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"grid ci: {len(refs)} tasks · 0 published · {len(refs)} missing (reference {len(refs)})"
    assert out[1].startswith("  estimated compute of the missing tasks: ")

    grid.run_task(Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=data_root), refs[0])
    assert main(args) == 0
    first = capsys.readouterr().out.splitlines()[0]
    n = len(refs) - 1
    assert first == f"grid ci: {len(refs)} tasks · 1 published · {n} missing (reference {n})"
    assert len(list((tmp_path / "ci" / "grid").rglob("*.json"))) == 1  # the dry runs published nothing


def test_files_lists_what_resumes_and_prune_deletes_only_stale_summaries(tmp_path, data_root, capsys) -> None:
    args = ["grid", "--profile", "ci", "--results-dir", str(tmp_path), "--data-dir", str(data_root)]
    refs = [t for t in grid_tasks("ci") if t.kind == "reference"]
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=data_root)
    done = grid.run_task(runner, refs[0])  # published
    unfinished = dataclasses.replace(refs[1].cfg, n_users=2)  # two users of a missing task's records
    runner.run(unfinished)
    records, cands = runner.paths(unfinished)[0], runner.candidates_path(unfinished)
    stale = done.parent / "test-ref-old-k0-ref-n10-000000000000.json"
    stale.write_text("{}")

    assert main([*args, "--files"]) == 0
    listed = [Path(x) for x in capsys.readouterr().out.splitlines()]
    assert set(listed) == {done, records, cands}
    assert stale.is_file()  # --files deletes nothing

    assert main([*args, "--prune"]) == 0
    assert "pruned 1 published file(s)" in capsys.readouterr().err
    assert not stale.exists() and done.is_file() and records.is_file()


def test_trained_weights_travel_with_the_results(tmp_path, data_root, capsys, monkeypatch) -> None:
    """A reader's checkpoint mid-training, then its final weights, are copied to results/<profile>/models/
    by --files; a fresh cache (another clone) gets them back from there; --prune drops an old copy."""
    monkeypatch.setenv("LRGD_CACHE", str(tmp_path / "cache"))
    args = [
        "grid",
        "--profile",
        "ci",
        "--results-dir",
        str(tmp_path / "results"),
        "--data-dir",
        str(data_root),
    ]
    tasks = [t for t in grid_tasks("ci") if t.kind == "reader"]
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "results", data_dir=data_root)
    (cached,) = grid.weights_files(runner, tasks)  # one trained model in the ci grid
    models = tmp_path / "results" / "ci" / "models"
    cached.parent.mkdir(parents=True)
    cached.with_suffix(".partial").write_bytes(b"step 250")

    assert main([*args, "--only-kind", "reader", "--files"]) == 0
    listed = [Path(x) for x in capsys.readouterr().out.splitlines()]
    assert models / cached.with_suffix(".partial").name in listed
    assert not (models / cached.name).exists()

    cached.with_suffix(".partial").unlink()  # a fresh machine: the checkpoint comes back from results/
    assert grid.import_weights(runner, tasks) == [cached.with_suffix(".partial")]
    assert cached.with_suffix(".partial").read_bytes() == b"step 250"
    assert grid.import_weights(runner, tasks) == []  # the cache's own checkpoint is never overwritten

    cached.write_bytes(b"final")  # training finished: the weights replace the committed checkpoint
    old = models / "reader-000000000000.pt"
    old.write_bytes(b"an earlier configuration")
    assert main([*args, "--files"]) == 0
    listed = [Path(x) for x in capsys.readouterr().out.splitlines()]
    assert models / cached.name in listed and old not in listed
    assert sorted(p.name for p in models.iterdir()) == sorted([cached.name, old.name])
    assert main([*args, "--prune"]) == 0
    capsys.readouterr()
    assert [p.name for p in models.iterdir()] == [cached.name]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--workers", "-1"], "error: --workers must be an integer ≥ 0"),
        (["--threads", "0"], "error: --threads must be an integer ≥ 1"),
        (["--dtype", "float8"], "error: --dtype 'float8' is unknown; choose one of auto, float32"),
        (["--only-kind", "gpt"], "error: --only-kind 'gpt' is not a kind; choose one of llm, reference"),
        (["--only-model", "gpt2"], "error: --only-model 'gpt2' has no task in this grid; choose one of "),
        (["--scheduler", "8786"], "error: --scheduler='8786' is not a dask scheduler address"),
        (["--profile", "laptop"], "error: unknown profile 'laptop'"),
        (["--device", "tpu"], "error: unknown device 'tpu'"),
        (["--prune", "--only-kind", "llm"], "error: --prune weighs every task of the profile; drop --only"),
    ],
)
def test_bad_grid_flags_end_in_one_line(flags, message, tmp_path, capsys) -> None:
    code = main(["grid", "--dry-run", "--results-dir", str(tmp_path), *flags])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1, err
    assert not any(tmp_path.rglob("*.json"))


def test_evaluate_passes_dtype_to_the_runner(tmp_path, data_root, model_dir, capsys) -> None:
    base = ["evaluate", "--dataset", "amazon-games", "--method", "zero-shot", "--users", "2",
            "--candidates", "5", "--model", str(model_dir), "--device", "cpu", "--quiet",
            "--results-dir", str(tmp_path), "--data-dir", str(data_root)]  # fmt: skip
    assert main([*base, "--dtype", "bfloat16"]) == 0 and main(base) == 0
    capsys.readouterr()
    dtypes = sorted(json.loads(p.read_text())["provenance"]["dtype"] for p in tmp_path.rglob("eval/*/*.json"))
    assert dtypes == ["bfloat16", "float32"]  # two files: the dtype is part of the key
    assert main([*base, "--dtype", "int4"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown dtype 'int4'")


# ----------------------------------------------------------------------------- the grid of each profile


@pytest.mark.parametrize("profile", PROFILES)
def test_each_profile_grid_is_consistent(profile: str) -> None:
    tasks = grid_tasks(profile)
    cfgs = [t.cfg for t in tasks]
    assert len(set(cfgs)) == len(cfgs), "a task is listed twice"
    assert {t.kind for t in tasks} <= set(KINDS) and {t.role for t in tasks} == {"valid", "test"}
    assert all(t.cfg.split == t.role for t in tasks)  # valid tasks choose on validation users only
    for name in get_profile(profile).grid.datasets:  # every row of a table on the same users: paired
        rows = [t for t in tasks if t.role == "test" and t.cfg.dataset == name]
        assert rows and len({t.cfg.n_users for t in rows}) == 1, name
        assert len({(t.cfg.n_candidates, t.cfg.seed) for t in rows}) == 1, name  # same saved candidates
    assert all((t.kind == "reference") == t.cfg.method.startswith("ref-") for t in tasks)
    labels = [t.label for t in tasks]
    assert len(set(labels)) == len(labels), "two tasks share a label (failures would be ambiguous)"


@pytest.mark.parametrize("profile", PROFILES)
def test_chapter_2s_llm_table_is_part_of_the_grid(profile: str) -> None:
    """Chapter 2's LLM table (the rule of its table cell) runs conditions the grid runs too, on the same
    first test users: at ``full`` the chapter then costs nothing beyond the grid's runs."""
    prof = get_profile(profile)
    E, model = prof.eval, prof.grid.models[0]
    grid_cfgs = {t.cfg for t in grid_tasks(profile) if t.role == "test"}
    for name in E.table_datasets:
        for m in E.table_methods:
            if m == "zero-shot" or name in E.icl_datasets:
                k = 0 if m == "zero-shot" else E.table_k
                cfg = EvalConfig(name, m, k, n_users=E.n_users, model=model, seed=0)
                assert cfg in grid_cfgs, f"{profile}: chapter 2's {cfg.name} on {name} is not a grid task"

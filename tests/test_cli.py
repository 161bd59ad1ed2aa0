"""Tests of ``python -m lrgd evaluate``: clear errors, no half-written results, an end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from lrgd.__main__ import main
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import Dataset, make_item, make_synthetic, write_synthetic
from lrgd.rec.runner import Runner


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic(
        make_synthetic(n_users=30, n_items=50, seed=2, min_len=4, max_len=8),
        root / "amazon-games",
        "amazon-games",
    )
    return root


def cli(*args: str, capsys) -> tuple[int, str, str]:
    code = main(["evaluate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "amazon-books", "--method", "random", "--k", "2"],
         "unknown dataset 'amazon-books'; choose one of amazon-beauty"),
        (["--dataset", "amazon-games", "--method", "knn"],
         "unknown method 'knn'; choose an LLM demonstration selector"),
        (["--dataset", "amazon-games", "--method", "random", "--k", "2", "--profile", "laptop"],
         "unknown profile 'laptop'; choose one of ci, full, gpu"),
        (["--dataset", "amazon-games", "--method", "zero-shot", "--k", "2"],
         "uses no demonstrations; got k=2. Use --k 0"),
        (["--dataset", "amazon-games", "--method", "ref-popularity", "--k", "1"],
         "takes no demonstrations; use --k 0"),
        (["--dataset", "amazon-games", "--method", "random", "--k", "1", "--users", "0"],
         "--users must be ≥ 1"),
        (["--dataset", "amazon-games", "--method", "zero-shot", "--max-prompt-tokens", "0"],
         "--max-prompt-tokens must be ≥ 1 (omit it for the model's context window), got 0"),
        (["--dataset", "amazon-games", "--method", "zero-shot", "--max-prompt-tokens", "-5"],
         "--max-prompt-tokens must be ≥ 1"),
        (["--dataset", "amazon-games", "--method", "zero-shot", "--seed", "-3"],
         "--seed must be ≥ 0, got -3"),
        (["--dataset", "amazon-games", "--method", "effect", "--k", "2", "--effect-pool", "0"],
         "--effect-pool must be ≥ 1, got 0"),
        (["--dataset", "amazon-games", "--method", "random", "--k", "2", "--effect-pool", "5"],
         "'random' takes no parameter effect_pool"),
        (["--dataset", "amazon-games", "--method", "zero-shot", "--device", "tpu"],
         "unknown device 'tpu'"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_problem(tmp_path, capsys, args, message) -> None:
    code, _, err = cli(*args, "--results-dir", str(tmp_path), capsys=capsys)
    assert code == 2 and err.startswith("error: ") and message in err
    assert files(tmp_path) == []


def test_empty_histories_are_a_clear_error(tmp_path, capsys) -> None:
    items = {str(i): make_item(str(i), f"Item {i} {i}" if i >= 10 else "", ()) for i in range(40)}
    seqs = {str(u): [str(u % 10), str((u + 1) % 10), str(10 + u)] for u in range(20)}  # untitled histories
    root = tmp_path / "data"
    write_synthetic(Dataset("x", items, seqs, Path("<mem>")), root / "amazon-games", "amazon-games")
    code, _, err = cli(
        "--dataset", "amazon-games", "--method", "ref-popularity", "--data-dir", str(root),
        "--results-dir", str(tmp_path / "res"), "--quiet", capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "non-empty titled history" in err and "(" in err
    assert not list((tmp_path / "res").rglob("*.json*"))


def test_prompt_over_the_window_is_a_clear_error(tmp_path, capsys, data_root, model_dir) -> None:
    code, _, err = cli(
        "--dataset", "amazon-games", "--method", "random", "--k", "2", "--model", str(model_dir),
        "--data-dir", str(data_root), "--results-dir", str(tmp_path), "--candidates", "10",
        "--max-prompt-tokens", "20", "--quiet", capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "one history item and no demonstrations" in err and "longer context window" in err
    assert not list(tmp_path.rglob("*.jsonl")) and not list(tmp_path.rglob("eval/**/*.json"))


def test_truncation_is_counted(tmp_path, data_root, model_dir) -> None:
    r = Runner("ci", "cpu", quiet=True, results_root=tmp_path, data_dir=data_root)
    full = r.run(EvalConfig("amazon-games", "random", 2, n_users=3, model=str(model_dir), n_candidates=10))
    cut = r.run(
        EvalConfig("amazon-games", "random", 2, n_users=3, model=str(model_dir), n_candidates=10,
                   max_prompt_tokens=int(full["prompt_tokens"]) - 5)
    )  # fmt: skip
    assert cut["truncated_users"] >= 1 and cut["history_items_dropped"] >= 1


def test_end_to_end_run_prints_what_it_stored(tmp_path, capsys, data_root, model_dir) -> None:
    args = ["--dataset", "amazon-games", "--method", "similarity", "--k", "1", "--model", str(model_dir),
            "--data-dir", str(data_root), "--results-dir", str(tmp_path),
            "--candidates", "10", "--users", "3", "--similarity-pool", "12"]  # fmt: skip
    code, out, err = cli(*args, capsys=capsys)
    assert code == 0, err
    assert "3 computed" in out
    summary = json.loads(Path(out.split("results: ")[1].strip()).read_text())
    assert summary["method_params"] == {"similarity_pool": 12} and summary["n_users"] == 3
    for variant, ms in summary["metrics"].items():  # every printed number is the stored one
        assert (
            f"{variant}: "
            + "  ".join(f"{m} {v['mean']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]" for m, v in ms.items())
            in out
        )
    code, again, _ = cli(*args, "--quiet", capsys=capsys)
    assert code == 0 and "0 computed" in again  # resumed from the per-user file
    metric_lines = [line for line in out.splitlines() if "HR@1 " in line]
    assert len(metric_lines) == 3 and metric_lines == [line for line in again.splitlines() if "HR@1 " in line]


def test_a_model_that_fails_to_load_leaves_no_file(tmp_path, capsys, data_root) -> None:
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "llama"}')  # no tokenizer, no weights
    code, _, err = cli(
        "--dataset", "amazon-games", "--method", "zero-shot", "--model", str(broken),
        "--data-dir", str(data_root), "--results-dir", str(tmp_path / "res"), "--quiet", capsys=capsys,
    )  # fmt: skip
    assert code == 2 and err.startswith("error: ") and str(broken) in err
    assert files(tmp_path / "res") == []  # in particular no candidates file


def test_method_parameters_come_from_the_selectors(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--similarity-pool", "--effect-pool", "--effect-users", "--bm25-k1"):
        assert flag in help_text


def test_module_entry_point() -> None:
    r = subprocess.run([sys.executable, "-m", "lrgd", "evaluate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--dataset" in r.stdout

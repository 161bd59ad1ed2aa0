"""A catalogue of bad inputs to ``python -m lrgd evaluate`` and the library (issue 12), beyond the bad
data files of tests/test_bad_data.py.

Each case asserts the exact error class (or, through the CLI, exit status 2 and one ``error:`` line on
stderr with no traceback), that the message names the parameter or file and the fix, and that nothing
half-written is left in the results folder. Cases where the right answer is to carry on (a corrupt cache,
records that parse but are wrong) assert the correct behaviour instead: the bad part is recomputed and
the summary equals that of a clean run. The CLI runs in-process on a tiny synthetic dataset with the
reference rankers (ref-*), so no LLM is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_rank import tiny_model_folder

from lrgd import llm
from lrgd.__main__ import main
from lrgd.config import find_dataset_dir, get_profile
from lrgd.errors import ConfigError, DataError, ModelError
from lrgd.rec.conditions import EvalConfig
from lrgd.rec.data import load_dataset, make_synthetic, write_synthetic
from lrgd.rec.records import seal
from lrgd.rec.runner import Runner
from lrgd.rec.select import SELECTORS

N_ITEMS = 50


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """A root holding a 30-user, 50-item ``amazon-games/`` in its source format."""
    root = tmp_path_factory.mktemp("data")
    ds = make_synthetic(n_users=30, n_items=N_ITEMS, seed=2, min_len=4, max_len=8)
    write_synthetic(ds, root / "amazon-games", "amazon-games")
    return root


def files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["evaluate", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def refused(capsys, res: Path, *args: str, names: str) -> str:
    """Run the CLI; assert exit 2, one ``error:`` line naming ``names``, no traceback, nothing in ``res``."""
    code, out, err = cli(capsys, *args, "--results-dir", str(res), "--quiet")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and names in lines[0], err
    assert files(res) == [], files(res)  # nothing written, in particular nothing half-written
    return lines[0]


def games(data_root: Path, *args: str) -> list[str]:
    return ["--dataset", "amazon-games", "--data-dir", str(data_root), *args]


# ----------------------------------------------------------------------------- where the data is


def test_missing_data_directory(tmp_path, capsys) -> None:
    gone = tmp_path / "no-such-root"
    msg = refused(capsys, tmp_path / "res", "--dataset", "amazon-games", "--method", "ref-popularity",
                  "--data-dir", str(gone), names=str(gone / "amazon-games"))  # fmt: skip
    assert "data/README.md" in msg


def test_data_dir_that_is_a_file(tmp_path, capsys) -> None:
    (tmp_path / "root").write_text("not a folder")
    refused(capsys, tmp_path / "res", "--dataset", "amazon-games", "--method", "ref-popularity",
            "--data-dir", str(tmp_path / "root"), names="amazon-games")  # fmt: skip


@pytest.mark.parametrize("typo", [False, True], ids=["lacks-dataset", "typo-in-path"])
def test_lrgd_data_dir_without_the_dataset_does_not_fall_back(tmp_path, monkeypatch, capsys, typo) -> None:
    """A set LRGD_DATA_DIR that lacks the dataset is an error naming the variable, the folder and the fix,
    even when data/ or ../shared/data hold the dataset (no silent read of another copy)."""
    root = tmp_path / ("dtaa" if typo else "data")
    if not typo:
        (root / "amazon-beauty").mkdir(parents=True)
    monkeypatch.setenv("LRGD_DATA_DIR", str(root))
    with pytest.raises(DataError) as err:
        find_dataset_dir("amazon-games")
    msg = str(err.value)
    assert type(err.value) is DataError and "\n" not in msg
    assert f"LRGD_DATA_DIR={root}" in msg and "set LRGD_DATA_DIR to the folder holding amazon-games/" in msg
    assert ("does not exist" in msg) == typo
    refused(capsys, tmp_path / "res", "--dataset", "amazon-games", "--method", "ref-popularity",
            names="LRGD_DATA_DIR")  # fmt: skip


def test_lrgd_data_dir_is_used_when_it_holds_the_dataset(data_root, monkeypatch) -> None:
    monkeypatch.setenv("LRGD_DATA_DIR", str(data_root))
    assert load_dataset("amazon-games").source == data_root / "amazon-games"


# ----------------------------------------------------------------------------- unknown names

UNKNOWN = [
    (lambda: load_dataset("amazon-books"), DataError, "unknown dataset 'amazon-books'; choose one of"),
    (lambda: EvalConfig("amazon-books", "ref-bm25").validate(), ConfigError, "unknown dataset 'amazon-b"),
    (lambda: EvalConfig("amazon-games", "ref-knn").validate(), ConfigError, "unknown method 'ref-knn'"),
    (lambda: get_profile("laptop"), ConfigError, "unknown profile 'laptop'; choose one of ci, full, gpu"),
    (lambda: SELECTORS.get("knn"), ConfigError, "unknown demonstration selector 'knn'; choose one of"),
    (lambda: llm.model_folder("gpt-5"), ModelError, "unknown model 'gpt-5'"),
    (lambda: EvalConfig("amazon-games", "ref-bm25", split="train").validate(), ConfigError,
     "unknown split 'train'; choose one of test, valid"),
    (lambda: EvalConfig("amazon-games", "ref-bm25", order="random").validate(), ConfigError,
     "unknown order 'random'; choose one of sampled, reversed, shuffled"),
    (lambda: EvalConfig("amazon-games", "zero-shot", mode="chat").validate(), ConfigError,
     "unknown mode 'chat'; choose one of score, generate"),
]  # fmt: skip


@pytest.mark.parametrize(
    "call,kind,message",
    UNKNOWN,
    ids=["dataset-lib", "dataset-cfg", "method", "profile", "selector", "model", "split", "order", "mode"],
)
def test_unknown_name_in_the_library(call, kind, message) -> None:
    with pytest.raises(kind) as err:
        call()
    assert type(err.value) is kind and message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "args,names",
    [
        (["--method", "ref-popularity", "--split", "train"], "unknown split 'train'"),
        (["--method", "ref-popularity", "--order", "random"], "unknown order 'random'"),
        (["--method", "zero-shot", "--model", "/no/such/model"], "unknown model '/no/such/model'"),
        (["--method", "ref-popularity", "--mode", "generate"], "non-LLM reference"),
        (["--method", "ref-popularity", "--list-candidates"], "non-LLM reference"),
    ],
    ids=["split", "order", "model-path", "ref-generate", "ref-listed"],
)
def test_unknown_or_inapplicable_option_on_the_cli(tmp_path, capsys, data_root, args, names) -> None:
    refused(capsys, tmp_path, *games(data_root, *args), names=names)


# ----------------------------------------------------------------------------- numbers out of range


@pytest.mark.parametrize(
    "args,names",
    [
        (["--method", "ref-popularity", "--k", "100"], "takes no demonstrations; use --k 0"),
        (["--method", "similarity", "--k", "20", "--similarity-pool", "5"],
         "--similarity-pool 5 is smaller than --k 20"),
        (["--method", "ref-popularity", "--candidates", str(N_ITEMS + 10), "--users", "2"],
         f"lower --candidates (got {N_ITEMS + 10})"),
        (["--method", "ref-popularity", "--candidates", str(N_ITEMS), "--users", "2"],
         f"lower --candidates (got {N_ITEMS})"),
        (["--method", "ref-bm25", "--bm25-k1", "nan"], "--bm25-k1 must be a finite number, got nan"),
        (["--method", "ref-bm25", "--bm25-b", "inf"], "--bm25-b must be a finite number, got inf"),
        (["--method", "ref-bm25", "--bm25-b=-inf"], "--bm25-b must be a finite number, got -inf"),
        (["--method", "ref-popularity", "--candidates", "-3"], "--candidates must be ≥ 2"),
        (["--method", "ref-popularity", "--history", "-1"], "--history must be ≥ 1, got -1"),
        (["--method", "ref-popularity", "--users", "-1"], "--users must be ≥ 1"),
        (["--method", "zero-shot", "--max-new-tokens", "0"], "--max-new-tokens must be ≥ 1, got 0"),
        (["--method", "ref-popularity", "--similarity-pool", "5"],
         "'ref-popularity' takes no parameter similarity_pool"),
    ],
    ids=["k-for-ref", "k-over-pool", "candidates-over-items", "candidates-equal-items", "nan", "inf",
         "minus-inf", "neg-candidates", "neg-history", "neg-users", "zero-new-tokens", "foreign-param"],
)  # fmt: skip
def test_number_out_of_range(tmp_path, capsys, data_root, args, names) -> None:
    refused(capsys, tmp_path, *games(data_root, *args), names=names)


@pytest.mark.parametrize("args", [["--bm25-k1", "-1"], ["--bm25-b", "2"]], ids=["neg-k1", "b-over-1"])
def test_bm25_parameters_outside_their_range(tmp_path, capsys, data_root, args) -> None:
    code, _, err = cli(
        capsys, *games(data_root, "--method", "ref-bm25", *args), "--results-dir", str(tmp_path)
    )
    assert code == 2 and args[0] in err and files(tmp_path) == []


def test_non_integer_in_the_library_and_on_the_cli(tmp_path, capsys, data_root) -> None:
    with pytest.raises(ConfigError, match=r"^--k must be an integer, got 1\.5$"):
        EvalConfig("amazon-games", "random", k=1.5).validate()
    with pytest.raises(ConfigError, match=r"^--seed must be ≥ 0, got -1$"):
        EvalConfig("amazon-games", "ref-bm25", seed=-1).validate()
    with pytest.raises(SystemExit) as exit_:  # argparse's own refusal: status 2, names the option
        main(["evaluate", *games(data_root, "--method", "ref-bm25", "--seed", "abc")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --seed: invalid int value: 'abc'" in err
    assert "Traceback" not in err and files(tmp_path) == []


def test_prompt_that_cannot_fit_the_window(tmp_path, data_root) -> None:
    """Even one history item cannot fit a 12-token budget: a ConfigError naming the option (not the model)."""
    model = tiny_model_folder(tmp_path / "tiny")
    runner = Runner("ci", "cpu", quiet=True, results_root=tmp_path / "res", data_dir=data_root)
    cfg = EvalConfig("amazon-games", "zero-shot", n_users=2, model=str(model), n_candidates=5,
                     max_prompt_tokens=12)  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"^--max-prompt-tokens 12 is too small for user .*raise --max-prompt"
    ):
        runner.run(cfg)
    assert not list((tmp_path / "res").rglob("*.jsonl")) and not list((tmp_path / "res").rglob("eval/**/*"))


def test_model_package_whose_gguf_is_missing(tmp_path, monkeypatch, capsys, data_root) -> None:
    """The package is installed but its GGUF file is gone: a ModelError naming the file and the fix."""
    src = llm.MODELS["smollm2-135m"]
    monkeypatch.setattr(
        llm, "MODELS", {"smollm2-135m": llm.GGUFSource(src.distribution, "gone.gguf", chat=True)}
    )
    monkeypatch.setenv("LRGD_CACHE", str(tmp_path / "cache"))  # no converted copy to fall back on
    try:
        llm._gguf_path("smollm2-135m")
    except ModelError as exc:
        if "needs the package" in str(exc):
            pytest.skip(f"{src.distribution} is not installed")
    with pytest.raises(ModelError, match=r"is installed but .*gone\.gguf is missing; reinstall it"):
        llm.model_folder("smollm2-135m")
    refused(capsys, tmp_path / "res", *games(data_root, "--method", "zero-shot"), names="gone.gguf")
    assert not list((tmp_path / "cache").rglob("*.safetensors"))  # no half-converted model


# ----------------------------------------------------------------------------- the results folder


def test_results_dir_that_is_a_file(tmp_path, capsys, data_root) -> None:
    (tmp_path / "res").write_text("a file, not a folder")
    code, _, err = cli(capsys, *games(data_root, "--method", "ref-popularity", "--users", "2"),
                       "--results-dir", str(tmp_path / "res"), "--quiet")  # fmt: skip
    assert code == 2 and err.startswith("error: cannot write results into ") and str(tmp_path / "res") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "res").read_text() == "a file, not a folder"


def test_results_dir_that_cannot_be_created(tmp_path, capsys, data_root) -> None:
    where = Path("/proc/lrgd-no-such-results")  # not creatable even by root
    code, _, err = cli(capsys, *games(data_root, "--method", "ref-popularity", "--users", "2"),
                       "--results-dir", str(where), "--quiet")  # fmt: skip
    assert code == 2 and str(where) in err and "writable" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- caches and records


@pytest.fixture
def clean_run(tmp_path, capsys, data_root):
    """(results root, args, summary path, summary) of a finished 6-user ref-markov run."""
    res = tmp_path / "res"
    args = [*games(data_root, "--method", "ref-markov", "--users", "6"), "--results-dir", str(res), "--quiet"]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    path = Path(out.split("results: ")[1].strip())
    return res, args, path, json.loads(path.read_text())


def same_numbers(a: dict, b: dict) -> bool:
    return a["users"] == b["users"] and a["ranks"] == b["ranks"] and a["metrics"] == b["metrics"]


def test_corrupt_candidates_cache_is_drawn_again(clean_run, capsys) -> None:
    res, args, path, first = clean_run
    (cands,) = (res / "ci" / "partial" / "candidates").glob("*.json")
    for junk in ('{"3": ["not", "an", "item"]', "[1, 2, 3]", '{"0": null}'):
        cands.write_text(junk)
        for f in (res / "ci" / "partial" / "amazon-games").glob("*.jsonl"):
            f.unlink()  # force every user to be recomputed from the candidates
        code, _, err = cli(capsys, *args)
        assert code == 0, err
        assert same_numbers(json.loads(path.read_text()), first)
        assert isinstance(json.loads(cands.read_text()), dict)  # rewritten whole


def test_corrupt_summary_file_is_rewritten(clean_run, capsys) -> None:
    _, args, path, first = clean_run
    path.write_text('{"metrics": ')
    code, out, err = cli(capsys, *args)
    assert code == 0 and "0 computed" in out, err
    assert same_numbers(json.loads(path.read_text()), first)


def _break(rec: dict, how: str) -> dict:
    out = dict(rec)
    if how == "missing-field":
        del out["rank"]
    elif how == "null-rank":
        out["rank"] = {v: None for v in rec["rank"]}
    elif how == "rank-0":
        out["rank"] = {v: 0 for v in rec["rank"]}
    elif how == "rank-over-candidates":
        out["rank"] = {v: 10_000 for v in rec["rank"]}
    elif how == "null-user":
        out["user"] = None
    return out


@pytest.mark.parametrize("how", ["missing-field", "null-rank", "rank-0", "rank-over-candidates", "null-user"])
def test_records_that_parse_but_are_wrong_are_recomputed(clean_run, capsys, how) -> None:
    """A record resealed with the right key and checksum (so only the schema can catch it) that lacks a
    field, holds null, or a rank outside 1..N is skipped, counted and recomputed: same summary."""
    res, args, path, first = clean_run
    (partial,) = (res / "ci" / "partial" / "amazon-games").glob("*.jsonl")
    lines = partial.read_text().splitlines()
    recs = [json.loads(line) for line in lines]
    body = {k: v for k, v in recs[2].items() if k not in ("key", "checksum")}
    bad = seal(_break(body, how), recs[2]["key"])
    partial.write_text("\n".join([*lines[:2], json.dumps(bad), *lines[3:]]) + "\n")
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "skipped 1 record line(s): 1 invalid" in err and "1 computed" in out
    assert same_numbers(json.loads(path.read_text()), first)


def test_record_line_that_is_json_but_not_an_object(clean_run, capsys) -> None:
    res, args, path, first = clean_run
    (partial,) = (res / "ci" / "partial" / "amazon-games").glob("*.jsonl")
    lines = partial.read_text().splitlines()
    partial.write_text("\n".join([lines[0], "[1, 2]", "null", *lines[2:]]) + "\n")
    code, out, err = cli(capsys, *args)
    assert code == 0 and "2 torn" in err and "1 computed" in out, err
    assert same_numbers(json.loads(path.read_text()), first)


@pytest.mark.parametrize("which", ["summary", "records", "candidates"])
def test_a_folder_in_place_of_a_result_file(clean_run, capsys, which) -> None:
    """The error names the file the folder stands in for (not a temporary name or its parent)."""
    res, args, path, _ = clean_run
    target = {
        "summary": path,
        "records": next((res / "ci" / "partial" / "amazon-games").glob("*.jsonl")),
        "candidates": next((res / "ci" / "partial" / "candidates").glob("*.json")),
    }[which]
    target.unlink()
    target.mkdir()
    if which != "summary":  # make the run need the file again
        path.unlink()
        for f in (res / "ci" / "partial").rglob("*.json*"):
            if f.is_file():
                f.unlink()
    code, _, err = cli(capsys, *args)
    assert code == 2 and err.strip() == f"error: cannot write {target}: a folder stands in its place; " + (
        "remove that folder (or choose another results folder)"
    ), err
    assert not [p for p in res.rglob("*.tmp")]  # no temporary file left behind


def test_record_file_with_invalid_utf8(clean_run, capsys) -> None:
    res, args, path, first = clean_run
    (partial,) = (res / "ci" / "partial" / "amazon-games").glob("*.jsonl")
    lines = partial.read_bytes().splitlines(keepends=True)
    partial.write_bytes(b"".join([*lines[:3], b'{"user": "\xff\xfe"}\n', *lines[4:]]))  # not UTF-8
    code, out, err = cli(capsys, *args)
    assert code == 0 and "skipped 1 record line(s)" in err and "1 computed" in out, err
    assert same_numbers(json.loads(path.read_text()), first)


def test_users_beyond_the_eligible_are_the_eligible(tmp_path, capsys, data_root) -> None:
    """Accepted and handled: asking for more users than are eligible evaluates every eligible user once."""
    code, out, err = cli(capsys, *games(data_root, "--method", "ref-popularity", "--users", "1000"),
                         "--results-dir", str(tmp_path), "--quiet")  # fmt: skip
    assert code == 0, err
    summary = json.loads(Path(out.split("results: ")[1].strip()).read_text())
    assert summary["n_users"] == summary["n_eligible"] == len(set(summary["users"])) <= 30


# ----------------------------------------------------------------------------- offline

PROBE = """
import socket

import pytest
from pytest_socket import SocketBlockedError


def test_tcp_is_refused():
    with pytest.raises(SocketBlockedError):
        socket.create_connection(("127.0.0.1", 9), timeout=1)


def test_unix_sockets_stay_allowed():
    a, b = socket.socketpair(socket.AF_UNIX)
    a.close(), b.close()
"""


def test_the_unit_recipe_blocks_the_network(tmp_path) -> None:
    """`make unit` runs pytest with the flags of its recipe; under them any attempt to open a TCP socket
    raises (so a test that reaches the network fails), while Unix sockets stay usable."""
    import shlex
    import subprocess
    import sys

    makefile = Path(__file__).resolve().parents[1] / "Makefile"
    recipe = makefile.read_text().split("\nunit:", 1)[1].splitlines()[1]
    flags = [f for f in shlex.split(recipe) if f.startswith("--")]
    assert "--disable-socket" in flags, recipe
    (tmp_path / "test_probe.py").write_text(PROBE)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *flags, str(tmp_path)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 0 and "2 passed" in run.stdout, run.stdout + run.stderr
    without = subprocess.run([*cmd[:6], str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert "test_tcp_is_refused FAILED" in without.stdout or "1 failed" in without.stdout, without.stdout

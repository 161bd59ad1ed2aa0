"""Tests of lrgd.rec.data: hand-written fixtures per format, splits, candidates, and real-data smoke tests."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from lrgd.config import data_roots
from lrgd.errors import DataError
from lrgd.rec.data import (
    DATASETS,
    Dataset,
    clean_title,
    leave_one_out,
    load_dataset,
    load_games_random_candidates,
    make_item,
    make_synthetic,
    sample_candidates,
    write_synthetic,
)


def write(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty LRGD_DATA_DIR in tmp_path."""
    monkeypatch.setenv("LRGD_DATA_DIR", str(tmp_path))
    return tmp_path


# ----------------------------------------------------------------------------- hand-written fixtures

BEAUTY_ITEM = (
    "item_id:token\ttitle:token\tsales_type:token\tsales_rank:float\tcategories:token_seq\tprice:float\tbrand:token\n"
    "A1\tClean &amp; Clear\tBeauty\t1.0\t'Beauty', 'Skin Care'\t5.0\tJ&J\n"
    'A2\t"Cream \nVanilla"\tBeauty\t2.0\t"\'Beauty\', ""Women\'s"""\t1.0\tX\n'
    "A3\t\tBeauty\t3.0\t'Beauty'\t1.0\tY\n"
)


def make_beauty(root: Path) -> Path:
    folder = write(root / "amazon-beauty", "user_sequence.txt", "U1 A1 A2 A3\nU2 A3 A1 A9\n")
    return write(folder, "Amazon_Beauty.item", BEAUTY_ITEM)


def test_beauty_parses(root: Path) -> None:
    folder = make_beauty(root)
    ds = load_dataset("amazon-beauty")
    assert ds.source == folder
    assert ds.sequences == {"U1": ["A1", "A2", "A3"], "U2": ["A3", "A1", "A9"]}
    assert ds.items["A1"].title == "Clean & Clear"
    assert ds.items["A1"].categories == ("Beauty", "Skin Care")
    assert ds.items["A2"].title == "Cream Vanilla"  # quoted field spanning two lines
    assert ds.items["A2"].categories == ("Beauty", "Women's")
    assert not ds.items["A3"].has_title
    assert ds.unknown_items == ("A9",) and not ds.items["A9"].has_title
    s = ds.stats()
    assert (s["users"], s["items"], s["interactions"], s["untitled"]) == (2, 4, 6, 2)
    with pytest.raises(DataError, match="no real title"):
        ds.title("A3")
    with pytest.raises(DataError, match="unknown item"):
        ds.title("nope")


def test_beauty_malformed_row_names_file_and_line(root: Path) -> None:
    folder = make_beauty(root)
    write(folder, "Amazon_Beauty.item", BEAUTY_ITEM + "A4\tonly two fields\n")
    with pytest.raises(DataError, match=r"Amazon_Beauty\.item:6: expected 7 tab-separated fields"):
        load_dataset("amazon-beauty")


def test_sequence_line_without_items_fails(root: Path) -> None:
    folder = make_beauty(root)
    write(folder, "user_sequence.txt", "U1 A1 A2\nU2\n")
    with pytest.raises(DataError, match=r"user_sequence\.txt:2: expected .*found 'U2'"):
        load_dataset("amazon-beauty")


TOYS_ITEMS = (
    "item_id\tasin\ttitle\thas_title\tcategories\n"
    '0\tB0\tMario &amp; Luigi  Deluxe\t1\t[["Toys & Games", "Puzzles"], ["Toys & Games", "Kids"]]\n'
    "1\tB1\ttitle_7\t0\t[]\n"
    '2\tB2\tDoll 18&quot;\t1\t[["Dolls"]]\n'
)


def test_toys_parses(root: Path) -> None:
    folder = write(root / "amazon-toys", "sequential_data.txt", "1 0 1 2\n2 2 0 1 0\n")
    write(folder, "items_joined.tsv", TOYS_ITEMS)
    ds = load_dataset("amazon-toys")
    assert ds.sequences == {"1": ["0", "1", "2"], "2": ["2", "0", "1", "0"]}
    assert ds.title("0") == "Mario & Luigi Deluxe"
    assert ds.items["0"].categories == ("Toys & Games", "Puzzles", "Kids")
    assert ds.title("2") == 'Doll 18"'
    assert not ds.items["1"].has_title
    write(folder, "items_joined.tsv", TOYS_ITEMS + "x\tB3\tTitle\t1\t[]\n")
    with pytest.raises(DataError, match=r"items_joined\.tsv:5: expected an integer item_id, found 'x'"):
        load_dataset("amazon-toys")


GAMES_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"


def make_games(root: Path) -> Path:
    folder = write(
        root / "amazon-games",
        "Games-6k.item",
        "item_id:token\ttitle:token_seq\n0\tZelda\n1\tMario\n2\tRez\n3\tIco\n",
    )
    write(folder, "Games-6k.test.inter", GAMES_HEADER + "0\t0 1 2\t3\n1\t3 2\t1\n")
    write(folder, "Games-6k.valid.inter", GAMES_HEADER + "0\t0 1\t2\n1\t3\t2\n")
    return write(folder, "Games-6k.random", "0\t1 2 3\n1\t0 2\n")


def test_games_parses(root: Path) -> None:
    make_games(root)
    ds = load_dataset("amazon-games")
    assert ds.sequences == {"0": ["0", "1", "2", "3"], "1": ["3", "2", "1"]}
    assert ds.title("2") == "Rez"
    assert load_games_random_candidates() == {"0": ["1", "2", "3"], "1": ["0", "2"]}


def test_games_inconsistent_valid_fails(root: Path) -> None:
    folder = make_games(root)
    write(folder, "Games-6k.valid.inter", GAMES_HEADER + "0\t0 1\t2\n1\t3\t0\n")
    with pytest.raises(DataError, match=r"Games-6k\.valid\.inter:3: expected user 1's test history"):
        load_dataset("amazon-games")


def test_games_wrong_header_and_bad_line(root: Path) -> None:
    folder = make_games(root)
    write(folder, "Games-6k.test.inter", "user\titems\titem\n0\t0 1 2\t3\n")
    with pytest.raises(DataError, match=r"Games-6k\.test\.inter:1: expected header"):
        load_dataset("amazon-games")
    write(folder, "Games-6k.test.inter", GAMES_HEADER + "0\t0 1 2\t3\n1 3 2 1\n")
    with pytest.raises(DataError, match=r"Games-6k\.test\.inter:3: expected 3 tab-separated fields"):
        load_dataset("amazon-games")


def test_scientific_parses(root: Path) -> None:
    folder = write(root / "amazon-scientific", "Scientific.inter.json", '{"0": [0, 1, 2], "1": [2, 1, 0, 1]}')
    items = {
        "0": {
            "title": "Tape.",
            "description": "",
            "brand": "",
            "categories": "Ind & Sci,Tapes, Adhesives,Duct",
        },
        "1": {"title": "  Glue\tgun.", "description": "", "brand": "", "categories": ""},
        "2": {"title": "nan", "description": "", "brand": "", "categories": "A"},
    }
    write(folder, "Scientific.item.json", json.dumps(items, indent=2))
    ds = load_dataset("amazon-scientific")
    assert ds.sequences == {"0": ["0", "1", "2"], "1": ["2", "1", "0", "1"]}
    assert ds.items["0"].categories == ("Ind & Sci", "Tapes, Adhesives", "Duct")
    assert ds.title("1") == "Glue gun." and ds.items["1"].categories == ()
    assert not ds.items["2"].has_title
    write(folder, "Scientific.inter.json", '{"0": [0, 1],\n "1": [2,, 1]}')
    with pytest.raises(DataError, match=r"Scientific\.inter\.json:2: expected valid JSON"):
        load_dataset("amazon-scientific")
    write(folder, "Scientific.inter.json", '{"0": [0, "x"]}')
    with pytest.raises(DataError, match=r"user '0': expected a non-empty list of integer"):
        load_dataset("amazon-scientific")


def test_ml100k_orders_by_timestamp_then_row(tmp_path: Path) -> None:
    folder = write(
        tmp_path / "ml-100k",
        "ml-100k.item",
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "1\tToy Story\t1995\tAnimation Children's Comedy\n"
        "2\tunkonwn\tunkonwn\tunknown\n"
        "3\tHeat\t1995\tAction\n",
    )
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    write(folder, "ml-100k.inter", inter + "7\t3\t4\t20\n5\t1\t3\t10\n7\t1\t5\t10\n7\t2\t1\t20\n")
    ds = load_dataset("ml-100k", data_dir=tmp_path)
    assert ds.sequences == {"5": ["1"], "7": ["1", "3", "2"]}  # ties on timestamp 20 keep row order
    assert ds.items["1"].categories == ("Animation", "Children's", "Comedy")
    assert not ds.items["2"].has_title
    assert ds.title("1") == "Toy Story (1995)" and ds.title("3") == "Heat (1995)"
    write(folder, "ml-100k.inter", inter + "7\t3\t4\tlate\n")
    with pytest.raises(
        DataError, match=r"ml-100k\.inter:2: expected 4 tab-separated fields.*found '7\\t3\\t4\\tlate'"
    ):
        load_dataset("ml-100k", data_dir=tmp_path)


def test_ml100k_titles_keep_the_year(tmp_path: Path) -> None:
    """Two films named "Cape Fear" are two titles; a film entered twice (same year) stays a title twin."""
    head = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    rows = "1\tCape Fear\t1991\tThriller\n2\tCape Fear\t1962\tThriller\n3\tDeceiver\t1997\tCrime\n"
    rows += "4\tDeceiver\t1997\tCrime\n5\tLand Before Time III (1995)\tV\tAnimation\n"
    folder = write(tmp_path / "ml-100k", "ml-100k.item", head + rows)
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t4\t1\n"
    write(folder, "ml-100k.inter", inter)
    ds = load_dataset("ml-100k", data_dir=tmp_path)
    assert [ds.title(i) for i in "12"] == ["Cape Fear (1991)", "Cape Fear (1962)"]
    assert ds.title("5") == "Land Before Time III (1995)"  # year column 'V': the title is kept as it is
    assert ds.title_twins() == {"Deceiver (1997)": ("3", "4")}


def test_fingerprint_follows_the_data() -> None:
    ds = make_synthetic(n_users=5, n_items=12, seed=1)
    same = make_synthetic(n_users=5, n_items=12, seed=1)
    assert ds.fingerprint() == same.fingerprint() and len(ds.fingerprint()) == 16
    same.items["3"] = make_item("3", "Another title")
    assert ds.fingerprint() != same.fingerprint()
    same = make_synthetic(n_users=5, n_items=12, seed=1)
    same.sequences["0"] = same.sequences["0"][::-1]
    assert ds.fingerprint() != same.fingerprint()


def test_unknown_dataset_lists_valid_names() -> None:
    with pytest.raises(DataError, match=r"unknown dataset 'movielens'.*amazon-beauty.*ml-100k"):
        load_dataset("movielens")


def test_missing_file_is_a_data_error(root: Path) -> None:
    write(root / "amazon-toys", "sequential_data.txt", "1 0 1 2\n")
    with pytest.raises(DataError, match=r"missing file .*items_joined\.tsv"):
        load_dataset("amazon-toys")


def test_clean_title() -> None:
    assert clean_title("Mario &amp; Luigi\n  Deluxe") == "Mario & Luigi Deluxe"
    assert clean_title(" Caf&eacute;\u00a0 50&#39;s ") == "Café 50's"
    assert not make_item("1", " nan ").has_title
    assert not make_item("1", "title_12").has_title
    assert make_item("1", "Title 12").has_title


# ----------------------------------------------------------------------------- synthetic round trips


@pytest.mark.parametrize("fmt", DATASETS)
def test_synthetic_round_trip(tmp_path: Path, fmt: str) -> None:
    ds = make_synthetic(n_users=15, n_items=40, seed=3, n_untitled=2)
    write_synthetic(ds, tmp_path / fmt, fmt)
    back = load_dataset(fmt, data_dir=tmp_path)
    assert back.sequences == ds.sequences
    titled = {i: it for i, it in ds.items.items() if it.has_title}
    if fmt == "amazon-games":  # the Games format has no categories
        titled = {i: replace(it, categories=()) for i, it in titled.items()}
    assert {i: it for i, it in back.items.items() if it.has_title} == titled
    assert [i for i, it in back.items.items() if not it.has_title] == ["38", "39"]  # placeholder text varies


# ----------------------------------------------------------------------------- splits and candidates


def tiny() -> Dataset:
    items = {str(i): make_item(str(i), f"t{i}") for i in range(30)}
    items["29"] = make_item("29", "")  # untitled: never a candidate
    seqs = {"a": ["5", "3", "9", "1"], "b": ["2", "4"], "c": ["7", "8", "6"]}
    return Dataset("tiny", items, seqs, Path("."))


def test_leave_one_out_exact() -> None:
    split = leave_one_out(tiny())
    assert split.train == {"a": ["5", "3"], "c": ["7"]}
    assert split.valid == {"a": (["5", "3"], "9"), "c": (["7"], "8")}
    assert split.test == {"a": (["5", "3", "9"], "1"), "c": (["7", "8"], "6")}
    assert split.skipped == 1


def test_candidates() -> None:
    ds = tiny()
    hist, target = ["5", "3", "9"], "1"
    cands = sample_candidates(ds, "a", target, hist, n=20, seed=0)
    assert len(cands) == 20 and len(set(cands)) == 20
    assert cands.count(target) == 1
    assert not set(cands) & (set(ds.sequences["a"]) - {target})
    assert "29" not in cands
    assert cands == sample_candidates(ds, "a", target, hist, n=20, seed=0)
    assert cands != sample_candidates(ds, "a", target, hist, n=20, seed=1)
    # 30 items - 1 untitled - 4 seen = 25 unseen negatives: 26 candidates is the most possible
    assert len(sample_candidates(ds, "a", target, hist, n=26)) == 26
    with pytest.raises(DataError, match="only 25 unseen titled items"):
        sample_candidates(ds, "a", target, hist, n=27)
    with pytest.raises(DataError, match="no title"):
        sample_candidates(ds, "a", "29", hist)


def test_candidate_order_is_shuffled() -> None:
    ds = make_synthetic(n_users=50, n_items=200, seed=0)
    positions = {sample_candidates(ds, u, s[-1], s[:-1], n=10).index(s[-1]) for u, s in ds.sequences.items()}
    assert len(positions) > 3  # the target is not always in the same slot


# ------------------------------------------------------------------------- real data (skipped when absent)

# users, items, interactions, min/median/max sequence length, untitled items (PROVENANCE.md)
EXPECTED = {
    "amazon-beauty": (22363, 12101, 198502, 5, 6, 204, 7),
    "amazon-toys": (19412, 11924, 167597, 5, 6, 550, 59),
    "amazon-games": (50546, 16859, 440264, 5, 6, 50, 0),
    "amazon-scientific": (8317, 4344, 58492, 5, 6, 78, 0),
    "ml-100k": (943, 1682, 100000, 20, 65, 737, 1),
}


@pytest.mark.parametrize("name", DATASETS)
def test_real_dataset_matches_provenance(name: str) -> None:
    try:
        ds = load_dataset(name)
    except DataError as e:
        if "not found" in str(e) or "pip install" in str(e):
            pytest.skip(f"{name} not available: {str(e).splitlines()[0]}")
        raise
    s = ds.stats()
    got = tuple(
        int(s[k]) for k in ("users", "items", "interactions", "min_len", "median_len", "max_len", "untitled")
    )
    assert got == EXPECTED[name]
    assert ds.unknown_items == ()
    assert leave_one_out(ds).skipped == 0


def test_real_ml100k_title_twins() -> None:
    """ML-100k: 22 titles name two items each without the year; with it, 18 (films entered twice) remain."""
    try:
        ds = load_dataset("ml-100k")
    except DataError as e:
        pytest.skip(f"ml-100k not available: {e}")
    twins = ds.title_twins()
    assert len(twins) == 18 and all(len(ids) == 2 for ids in twins.values())
    assert ds.title("218") == "Cape Fear (1991)" and ds.title("673") == "Cape Fear (1962)"
    assert twins["Chasing Amy (1997)"] == ("246", "268")


def test_real_games_candidates_file() -> None:
    if not any((r / "amazon-games" / "Games-6k.random").is_file() for r in data_roots()):
        pytest.skip("amazon-games not available")
    cands = load_games_random_candidates()
    assert len(cands) == 6000 and {len(c) for c in cands.values()} == {100}

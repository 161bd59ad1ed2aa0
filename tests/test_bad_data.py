"""Bad data files → one DataError line naming the file (and the line or byte), never a silent wrong answer.

Each test writes a small valid dataset in tmp_path, breaks one thing, and checks the exact error class and
that the message names the broken file (and, where it applies, the line or byte offset).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lrgd.errors import DataError
from lrgd.rec.data import load_dataset

GAMES_ITEM = "item_id:token\ttitle:token_seq\n0\tZelda\n1\tMario\n2\tRez\n3\tIco\n"
GAMES_HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
GAMES_TEST = GAMES_HEADER + "0\t0 1 2\t3\n1\t3 2\t1\n"
GAMES_VALID = GAMES_HEADER + "0\t0 1\t2\n1\t3\t2\n"


def games(tmp_path: Path, **files: str | bytes) -> Path:
    """A valid Games folder; ``files`` (keyed by suffix: item, test, valid) replace its files."""
    folder = tmp_path / "amazon-games"
    folder.mkdir()
    texts = {"item": GAMES_ITEM, "test": GAMES_TEST, "valid": GAMES_VALID} | files
    for key, text in texts.items():
        name = f"Games-6k.{key}" if key == "item" else f"Games-6k.{key}.inter"
        data = text.encode("utf-8") if isinstance(text, str) else text
        (folder / name).write_bytes(data)
    return folder


def raises(tmp_path: Path, name: str, pattern: str) -> str:
    """Load ``name`` from tmp_path; assert a DataError whose one-line message matches ``pattern``."""
    with pytest.raises(DataError) as err:
        load_dataset(name, data_dir=tmp_path)
    msg = str(err.value)
    assert type(err.value) is DataError
    assert "\n" not in msg, msg
    assert re.search(pattern, msg), msg
    return msg


def test_valid_fixture_loads(tmp_path: Path) -> None:
    """Sanity check of the fixture itself: unbroken, it loads."""
    games(tmp_path)
    assert load_dataset("amazon-games", data_dir=tmp_path).sequences["0"] == ["0", "1", "2", "3"]


# ----------------------------------------------------------------------------- silent wrong results


def test_repeated_item_id_with_another_title(tmp_path: Path) -> None:
    games(tmp_path, item=GAMES_ITEM + "3\tIco HD\n")
    pattern = r"Games-6k\.item:6: expected each item id once.*repeated item 3 with another title"
    raises(tmp_path, "amazon-games", pattern)


def test_repeated_item_id_in_ml100k_and_toys(tmp_path: Path) -> None:
    ml = tmp_path / "ml-100k"
    ml.mkdir()
    head = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    (ml / "ml-100k.item").write_text(head + "1\tHeat\t1995\tAction\n1\tHeat\t1995\tAction\n")
    inter = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n1\t1\t4\t1\n"
    (ml / "ml-100k.inter").write_text(inter)
    raises(tmp_path, "ml-100k", r"ml-100k\.item:3: expected each item id once.*repeated item 1'")
    toys = tmp_path / "amazon-toys"
    toys.mkdir()
    (toys / "sequential_data.txt").write_text("1 0 0\n")
    rows = "item_id\tasin\ttitle\thas_title\tcategories\n0\tB0\tBall\t1\t[]\n0\tB1\tKite\t1\t[]\n"
    (toys / "items_joined.tsv").write_text(rows)
    raises(tmp_path, "amazon-toys", r"items_joined\.tsv:3: .*repeated item 0 with another title")


def scientific(tmp_path: Path, items: str, inter: str = '{"u": [0, 1, 0]}') -> Path:
    folder = tmp_path / "amazon-scientific"
    folder.mkdir()
    (folder / "Scientific.item.json").write_text(items, encoding="utf-8")
    (folder / "Scientific.inter.json").write_text(inter, encoding="utf-8")
    return folder


def test_duplicate_key_in_scientific_json(tmp_path: Path) -> None:
    items = '{\n "0": {"title": "Tape."},\n "1": {"title": "Glue."},\n "0": {"title": "Other."}\n}'
    scientific(tmp_path, items)
    raises(tmp_path, "amazon-scientific", r"Scientific\.item\.json:4: expected each key once.*repeated key 0")


def test_duplicate_key_inside_one_item(tmp_path: Path) -> None:
    items = '{\n "0": {"title": "Tape."},\n "1": {"title": "Glue.",\n       "title": "Gun."}\n}'
    scientific(tmp_path, items)
    raises(tmp_path, "amazon-scientific", r"Scientific\.item\.json:4: .*repeated key title")


def test_duplicate_user_in_scientific_inter(tmp_path: Path) -> None:
    scientific(tmp_path, '{"0": {"title": "A."}, "1": {"title": "B."}}', '{"u": [0, 1],\n"u": [1, 0]}')
    raises(tmp_path, "amazon-scientific", r"Scientific\.inter\.json:2: .*repeated key u")


@pytest.mark.parametrize(
    ("valid", "pattern"),
    [
        (None, r"missing file .*Games-6k\.valid\.inter"),
        ("", r"Games-6k\.valid\.inter: no data lines after the header"),
        (GAMES_HEADER, r"Games-6k\.valid\.inter: no data lines after the header"),
        ("dir", r"Games-6k\.valid\.inter is a directory, expected a data file"),
        (GAMES_HEADER + "0\t0 1\t2\n", r"valid\.inter: 1 users of Games-6k\.test\.inter are missing"),
        (GAMES_VALID + "7\t0\t1\n", r"valid\.inter:4: .*user 7, absent from Games-6k\.test\.inter"),
    ],
    ids=["missing", "empty", "header-only", "directory", "user-missing", "extra-user"],
)
def test_valid_inter_cannot_skip_the_check(tmp_path: Path, valid: str | None, pattern: str) -> None:
    folder = games(tmp_path)
    vpath = folder / "Games-6k.valid.inter"
    vpath.unlink()
    if valid == "dir":
        vpath.mkdir()
    elif valid is not None:
        vpath.write_text(valid)
    raises(tmp_path, "amazon-games", pattern)


# ----------------------------------------------------------------------------- raw tracebacks before


def test_invalid_utf8_names_file_line_and_byte(tmp_path: Path) -> None:
    bad = GAMES_ITEM.encode() + b"4\tCaf\xe9\n"  # latin-1 e-acute
    games(tmp_path, item=bad)
    offset = len(GAMES_ITEM.encode()) + len(b"4\tCaf")
    raises(tmp_path, "amazon-games", rf"Games-6k\.item:6: invalid UTF-8 at byte offset {offset} .*re-save")


def test_invalid_utf8_in_beauty_csv_and_scientific_json(tmp_path: Path) -> None:
    beauty = tmp_path / "amazon-beauty"
    beauty.mkdir()
    (beauty / "user_sequence.txt").write_text("U1 A1 A1 A1\n")
    head = b"item_id:token\ttitle:token\tcategories:token_seq\n"
    (beauty / "Amazon_Beauty.item").write_bytes(head + b"A1\tCr\xe8me\t'Beauty'\n")
    raises(tmp_path, "amazon-beauty", rf"Amazon_Beauty\.item:2: invalid UTF-8 at byte offset {len(head) + 5}")
    folder = scientific(tmp_path, "{}")
    (folder / "Scientific.item.json").write_bytes(b'{\n"0": {"title": "\xff"}}')
    raises(tmp_path, "amazon-scientific", r"Scientific\.item\.json:2: invalid UTF-8 at byte offset 18")


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = games(tmp_path)
    target = folder / "Games-6k.test.inter"
    read_bytes = Path.read_bytes

    def deny(self: Path) -> bytes:  # chmod 000 does not stop root, so refuse the read here
        if self == target:
            raise PermissionError(13, "Permission denied")
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    raises(tmp_path, "amazon-games", r"cannot read .*Games-6k\.test\.inter: Permission denied; check")


# ----------------------------------------------------------------------------- misleading errors before


def test_empty_item_file_names_its_path(tmp_path: Path) -> None:
    games(tmp_path, item="")
    raises(tmp_path, "amazon-games", r"Games-6k\.item: no data lines after the header \(empty file\?\)")


def test_header_only_item_file_names_its_path(tmp_path: Path) -> None:
    games(tmp_path, item="item_id:token\ttitle:token_seq\n")
    raises(tmp_path, "amazon-games", r"Games-6k\.item: no data lines after the header")


def test_empty_beauty_item_file_names_its_path(tmp_path: Path) -> None:
    folder = tmp_path / "amazon-beauty"
    folder.mkdir()
    (folder / "user_sequence.txt").write_text("U1 A1 A1 A1\n")
    (folder / "Amazon_Beauty.item").write_text("")
    raises(tmp_path, "amazon-beauty", r"Amazon_Beauty\.item:1: expected a header")
    (folder / "Amazon_Beauty.item").write_text("item_id:token\ttitle:token\tcategories:token_seq\n")
    raises(tmp_path, "amazon-beauty", r"Amazon_Beauty\.item: no data lines after the header")


def test_empty_test_file_is_blamed_on_itself(tmp_path: Path) -> None:
    games(tmp_path, test="")
    msg = raises(tmp_path, "amazon-games", r"Games-6k\.test\.inter: no data lines after the header")
    assert "valid.inter" not in msg


def test_empty_sequence_file_and_empty_json(tmp_path: Path) -> None:
    folder = tmp_path / "amazon-toys"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("\n\n")
    raises(tmp_path, "amazon-toys", r"sequential_data\.txt: no data lines \(empty file\?\)")
    scientific(tmp_path, json.dumps({"0": {"title": "A."}}), "{}")
    raises(tmp_path, "amazon-scientific", r"Scientific\.inter\.json: an empty JSON object")


def test_directory_in_place_of_a_file_is_not_missing(tmp_path: Path) -> None:
    folder = games(tmp_path)
    (folder / "Games-6k.item").unlink()
    (folder / "Games-6k.item").mkdir()
    msg = raises(tmp_path, "amazon-games", r"Games-6k\.item is a directory, expected a data file")
    assert "missing" not in msg
    sci = scientific(tmp_path, "{}")
    (sci / "Scientific.inter.json").unlink()
    (sci / "Scientific.inter.json").mkdir()
    raises(tmp_path, "amazon-scientific", r"Scientific\.inter\.json is a directory")

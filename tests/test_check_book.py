"""The browser check of the built book (scripts/check_book.py): its rules on hand-made pages.

The pure rules run everywhere; the end-to-end test drives the system Chromium on a small folder of pages,
each with one defect, and runs wherever Chromium is installed (CI installs it: there it must run).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("check_book", ROOT / "scripts" / "check_book.py")
cb = importlib.util.module_from_spec(spec)
sys.modules["check_book"] = cb
spec.loader.exec_module(cb)

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def facts(**kw) -> dict:
    base = {"math": 0, "mathSource": 0, "text": "", "images": [], "badOutputs": 0}
    return base | kw


def test_text_rules_flag_each_defect_and_pass_a_clean_page():
    assert cb.text_problems(facts(math=3, mathSource=3, text="a clean page", images=[["a.png", True]])) == []
    assert cb.text_problems(facts(mathSource=2)) == ["2 math element(s) but no MathJax output"]
    assert cb.text_problems(facts(text="see $$x^2$$")) == ["raw math delimiter '$$' left in the text"]
    assert cb.text_problems(facts(text="Traceback (most recent call last):\n  File")) == [
        "a Python traceback is shown"
    ]
    assert cb.text_problems(facts(badOutputs=1)) == ["1 stderr/error output block(s) shown"]
    assert cb.text_problems(facts(images=[["x.png", False]])) == ["image 'x.png' did not load"]


def test_inside_the_book_and_outside(tmp_path):
    (tmp_path / "a").mkdir()
    assert cb.inside((tmp_path / "a" / "p.html").as_uri(), tmp_path)
    assert cb.inside("data:image/png;base64,xx", tmp_path)
    assert not cb.inside("https://unpkg.com/thebe/lib/index.js", tmp_path)
    assert not cb.inside((tmp_path.parent / "other.html").as_uri(), tmp_path)


def test_links_resolve_to_files_and_anchors(tmp_path):
    (tmp_path / "sub").mkdir()
    page, other = tmp_path / "sub" / "p.html", tmp_path / "q.html"
    page.write_text("x")
    other.write_text("x")
    ids = {other: {"sec-1"}, page: {"top"}}.__getitem__
    assert cb.link_problem("../q.html#sec-1", page, tmp_path, ids) is None
    assert cb.link_problem("#top", page, tmp_path, ids) is None
    assert cb.link_problem("https://arxiv.org/abs/2504.04386", page, tmp_path, ids) is None  # not followed
    assert "broken link" in cb.link_problem("../missing.html", page, tmp_path, ids)
    assert "broken anchor" in cb.link_problem("../q.html#nowhere", page, tmp_path, ids)
    assert (
        cb.redirect_target('<meta http-equiv="Refresh" content="0; url=book/intro.html" />')
        == "book/intro.html"
    )
    assert cb.redirect_target("<p>no redirect</p>") is None


PNG = bytes.fromhex(  # a 1×1 PNG
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082"
)


def _site(root: Path) -> None:
    (root / "ok.png").write_bytes(PNG)
    good = (
        '<html><body><h1 id="h">fine</h1><img src="ok.png">'
        '<a href="#h">self</a><a href="bad.html">b</a></body></html>'
    )
    pages = {
        "index.html": '<meta http-equiv="Refresh" content="0; url=good.html" />',
        "good.html": good,
        "bad.html": (
            '<html><body><img src="missing.png"><p>left $$x$$</p>'
            '<div class="output stderr"><pre>warning</pre></div>'
            '<a href="nowhere.html">x</a><script src="https://cdn.example.org/x.js"></script>'
            "<script>throw new Error('boom')</script></body></html>"
        ),
    }
    for name, html in pages.items():
        (root / name).write_text(html)


@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true", reason="no Chromium here (CI installs it)"
)
def test_browser_check_passes_a_clean_page_and_names_every_defect(tmp_path):
    pytest.importorskip("playwright")
    _site(tmp_path)
    reports = {r.page: r.problems for r in cb.check(tmp_path, shutil.which(CHROMIUM) or CHROMIUM)}
    assert reports["good.html"] == [] and reports["index.html"] == []
    bad = "\n".join(reports["bad.html"])
    for expected in (
        "image 'missing.png' did not load",
        "raw math delimiter '$$'",
        "stderr/error output block",
        "broken link 'nowhere.html'",
        "loads https://cdn.example.org/x.js from outside the book",
        "script error: boom",
    ):
        assert expected in bad, (expected, bad)
    assert cb.main([str(tmp_path), "--chromium", CHROMIUM]) == 1
    assert cb.main([str(tmp_path / "nothing"), "--chromium", CHROMIUM]) == 2

"""Load every page of the built book in headless Chromium and check what a reader would see.

    python scripts/check_book.py _build/html [--chromium /usr/bin/chromium]

For every HTML page of the book (the pages the table of contents lists, plus index/search), from the
rendered DOM after the page's scripts have run:

* **math is typeset**: a page whose source has math shows MathJax output (``mjx-container``) and no raw
  ``$$`` / ``\\[`` / ``\\(`` delimiters are left in its visible text (code blocks excepted);
* **every image loads**: ``naturalWidth > 0`` for each ``<img>``;
* **no traceback, no stderr**: no output cell of class ``stderr`` / ``traceback`` / ``error``, and no
  "Traceback (most recent call last)" in the visible text;
* **no broken link inside the book**: every relative ``href`` resolves to a file of the build (and its
  ``#anchor``, when given, to an element id of that page);
* **nothing from outside**: every request the page makes stays inside the build folder (``file://``
  under it, or ``data:``/``blob:``); a script error on the page also fails.

Exit status 0 when every page passes; otherwise one line per problem (page: what) and status 1. A missing
build folder or browser is one line and status 2. Used by ``make browser`` (part of ``make test``).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

SKIP_PAGES = {"genindex.html", "search.html"}  # Sphinx's generated index and search pages
BAD_OUTPUT = "div.output.stderr, div.output.traceback, div.output.error, .cell_output .stderr"

# Runs in the page: everything the checks need, read from the rendered DOM.
PAGE_FACTS = """(badOutput) => {
  const hidden = el => el.closest('pre, code, script, style, .highlight, mjx-container');
  const walker = document.createTreeWalker(document.body || document.documentElement, NodeFilter.SHOW_TEXT);
  let text = '';
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    if (!hidden(n.parentElement)) text += n.textContent + '\\n';
  }
  return {
    math: document.querySelectorAll('mjx-container').length,
    mathSource: document.querySelectorAll('.math, div.math, span.math').length,
    text: text,
    images: [...document.images].map(i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id),
    badOutputs: document.querySelectorAll(badOutput).length,
  };
}"""


@dataclass
class PageReport:
    """What one page showed; ``problems`` is empty when it passes."""

    page: str
    problems: list[str] = field(default_factory=list)


def pages(root: Path) -> list[Path]:
    """Every content page of the build (Sphinx's own index/search pages and static assets excluded)."""
    skip = ("_static", "_sources", "_images", "_sphinx_design_static")
    out = [
        p
        for p in sorted(root.rglob("*.html"))
        if not any(part in skip for part in p.relative_to(root).parts) and p.name not in SKIP_PAGES
    ]
    return out


def inside(url: str, root: Path) -> bool:
    """Whether a request URL stays inside the build folder ``root`` (``data:``/``blob:``/``about:`` count)."""
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    if parts.scheme != "file":
        return False
    path = Path(unquote(parts.path)).resolve()
    return path == root.resolve() or root.resolve() in path.parents


def link_problem(href: str, page: Path, root: Path, ids_of) -> str | None:
    """Why a link from ``page`` is broken, or None. External links (a scheme, ``mailto:``) are not followed:
    only links inside the book are checked. ``ids_of(path) → set`` gives the element ids of a page."""
    parts = urlsplit(href)
    if parts.scheme or href.startswith("//"):
        return None
    target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
    if target.is_dir():
        target = target / "index.html"
    if not target.exists():
        return f"broken link {href!r} (no file {target})"
    if not inside(target.as_uri(), root):
        return f"link {href!r} leaves the book"
    if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in ids_of(target):
        return f"broken anchor {href!r}"
    return None


REFRESH = re.compile(r"""<meta[^>]+http-equiv=["']?refresh["']?[^>]*url=([^"'>\s]+)""", re.IGNORECASE)


def redirect_target(html: str) -> str | None:
    """The URL a redirect stub (``<meta http-equiv="refresh" content="0; url=...">``) sends to, or None."""
    m = REFRESH.search(html)
    return m.group(1) if m else None


RAW_MATH = ("$$", "\\[", "\\(", "\\begin{")


def text_problems(facts: dict) -> list[str]:
    """Problems visible in the page text and DOM counts (pure: unit-tested without a browser)."""
    out = []
    if facts["mathSource"] and not facts["math"]:
        out.append(f"{facts['mathSource']} math element(s) but no MathJax output")
    for raw in RAW_MATH:
        if raw in facts["text"]:
            out.append(f"raw math delimiter {raw!r} left in the text")
    if "Traceback (most recent call last)" in facts["text"]:
        out.append("a Python traceback is shown")
    if facts["badOutputs"]:
        out.append(f"{facts['badOutputs']} stderr/error output block(s) shown")
    out += [f"image {src!r} did not load" for src, ok in facts["images"] if not ok]
    return out


def check(root: Path, chromium: str, timeout_ms: int = 30_000) -> list[PageReport]:
    from playwright.sync_api import sync_playwright

    root = root.resolve()
    ids_cache: dict[Path, set] = {}
    reports = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])

        def ids_of(path: Path) -> set:
            if path not in ids_cache:
                other = browser.new_page()
                other.goto(path.as_uri(), wait_until="domcontentloaded")
                ids_cache[path] = set(
                    other.evaluate("() => [...document.querySelectorAll('[id]')].map(e => e.id)")
                )
                other.close()
            return ids_cache[path]

        for path in pages(root):
            rep, outside, errors = PageReport(str(path.relative_to(root))), [], []
            if target := redirect_target(path.read_text(encoding="utf-8", errors="replace")):
                rep.problems += [why] if (why := link_problem(target, path, root, ids_of)) else []
                reports.append(rep)  # a redirect stub (the book's index.html): only its target is checked
                continue
            page = browser.new_page()  # a tab per page: its listeners see only its own requests
            page.on("request", lambda r, out=outside: out.append(r.url) if not inside(r.url, root) else None)
            page.on("pageerror", lambda e, err=errors: err.append(str(e).splitlines()[0]))
            page.goto(path.as_uri(), wait_until="load", timeout=timeout_ms)
            page.evaluate(  # wait for MathJax to finish typesetting, when the page loads it
                "() => (window.MathJax && MathJax.startup && MathJax.startup.promise) || null"
            )
            facts = page.evaluate(PAGE_FACTS, BAD_OUTPUT)
            page.close()
            ids_cache[path] = set(facts["ids"])
            rep.problems += text_problems(facts)
            rep.problems += [
                why for href in sorted(set(facts["links"])) if (why := link_problem(href, path, root, ids_of))
            ]
            rep.problems += [f"loads {u} from outside the book" for u in sorted(set(outside))]
            rep.problems += [f"script error: {e}" for e in errors]
            reports.append(rep)
        browser.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root", type=Path, help="the built HTML folder (_build/html)")
    ap.add_argument("--chromium", default="/usr/bin/chromium", help="the Chromium binary to drive")
    a = ap.parse_args(argv)
    if not (a.root / "index.html").exists():
        print(
            f"error: no built book at {a.root} (index.html missing); run `make book` first", file=sys.stderr
        )
        return 2
    if not Path(a.chromium).exists():
        print(
            f"error: no Chromium at {a.chromium}; install it (apt-get install -y chromium) or pass --chromium"
        )
        return 2
    reports = check(a.root, a.chromium)
    bad = [r for r in reports if r.problems]
    for r in reports:
        print(f"{'FAIL' if r.problems else 'ok  '} {r.page}")
        for p in r.problems:
            print(f"     {p}")
    print(f"{len(reports) - len(bad)}/{len(reports)} pages pass the browser check")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

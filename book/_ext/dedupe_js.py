"""Drop repeated inline scripts from every page.

sphinx-thebe (loaded by Jupyter Book 1.x) adds its inline configuration script once per
``env-before-read-docs`` event, which fires more than once per build, so every page declared
``const THEBE_JS_URL`` twice and the second declaration was a script error in the browser
(found by ``scripts/check_book.py``). This keeps the first copy of each script.
"""

from __future__ import annotations


def _dedupe(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        key = (getattr(js, "filename", js) or "", getattr(js, "attributes", {}).get("body", ""))  # None ≡ ""
        if key not in seen:
            seen.add(key)
            kept.append(js)
    scripts[:] = kept


def setup(app):
    app.connect("html-page-context", _dedupe)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

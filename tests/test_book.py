"""The executed notebooks and the book, as a reader gets them (issue #28).

The committed executed notebooks (``executed/``) hold an image for every figure their notebook
saves (``figures/manifest.json``), no absolute path of a machine, no error and no warning, and
publishing is deterministic. The book built from them (``book/build.py``, ``make book``) is opened in headless
Chromium (Debian's package, driven by Playwright; ``make browser`` installs both): every image
loads, the claims ledger is on the front page, every internal link resolves, the console shows
no error and no request leaves the site (it reads offline).

Without a committed ``executed/`` (before the first ``make figures`` that writes it), the tests
run the six notebooks on profile smoke into a temporary directory and publish those instead
(minutes, not seconds). ``BDLIB_BOOK_EXECUTED`` and ``BDLIB_BOOK_FIGURES`` name another set;
``BDLIB_BOOK_SCREENSHOTS=DIR`` saves the front page and notebook 06's page at 1,400 px wide.
This file never skips: without Chromium or Playwright it fails, saying how to install them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from bdlib.runner import notebooks, publish

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def executed_set(tmp_path_factory) -> tuple[Path, Path, str]:
    """(executed notebooks, their figures' directory, where they come from)."""
    given = os.environ.get("BDLIB_BOOK_EXECUTED")
    if given:
        return Path(given), Path(os.environ.get("BDLIB_BOOK_FIGURES", REPO / "figures")), "BDLIB_BOOK_EXECUTED"
    committed = REPO / publish.PUBLISHED_DIR
    if list(committed.glob("*.ipynb")):
        return committed, REPO / "figures", "committed"
    tmp = tmp_path_factory.mktemp("smoke-book")
    run = [sys.executable, "-m", "bdlib", "run", "--profile", "smoke", "--out", str(tmp / "raw")]
    done = subprocess.run(
        [*run, "--figures", str(tmp / "figures")], cwd=REPO, capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, f"the smoke run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for nb in sorted((tmp / "raw").glob("*.ipynb")):
        publish.publish(nb, tmp / "executed")
    return tmp / "executed", tmp / "figures", "smoke run"


def test_scrub_replaces_the_machines_paths():
    root = REPO
    text = (
        f"[PosixPath('{root}/.figures-staging-ab_12x/01_x.png'), '{root}/build/figures/.smoke-staging-q1/02_y.json']\n"
        f'  File "{sys.prefix}/lib/python3.11/site-packages/torch/nn/x.py", line 3\n'
        f"cwd {root}\n"
    )
    out = publish.scrub(text, root)
    assert "figures/01_x.png" in out and "'build/figures/smoke/02_y.json'" in out
    assert "staging" not in out and str(root) not in out and "cwd .\n" in out
    assert not publish.absolute_paths({"cells": [{"outputs": [{"text": out}]}]}), out


def _raw_run(tag: str, uid: str, address: str, split: bool) -> dict:
    """An executed notebook as papermill writes it, volatile parts drawn from the arguments."""
    stamp = {"start_time": f"2026-12-0{tag}T10:00:00", "duration": float(tag), "status": "completed"}
    stream = ["one\n", "two\n"] if split else ["one\ntwo\n"]
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python", "version": f"3.11.{tag}"},
            "papermill": {**stamp, "input_path": f"{REPO}/notebooks/x.ipynb", "parameters": {"profile": "smoke"}},
        },
        "cells": [
            {"cell_type": "markdown", "id": f"md{tag}", "metadata": {"papermill": stamp, "tags": []}, "source": "# x"},
            {
                "cell_type": "code",
                "id": f"inj{tag}",
                "execution_count": 3,
                "metadata": {"tags": ["injected-parameters"], "execution": {"iopub.status.idle": stamp["start_time"]}},
                "outputs": [],
                "source": '# Parameters\nprofile = "smoke"\n',
            },
            {
                "cell_type": "code",
                "id": f"code{tag}",
                "execution_count": 7,
                "metadata": {"papermill": stamp},
                "source": "show()",
                "outputs": [
                    *({"output_type": "stream", "name": "stdout", "text": t} for t in stream),
                    {"output_type": "display_data", "metadata": {"bdlib_progress": True}, "data": {"text/plain": tag}},
                    {
                        "output_type": "execute_result",
                        "execution_count": 7,
                        "metadata": {},
                        "data": {
                            "text/html": f'<table id="T_{uid}"><td id="T_{uid}_row0_col0">{REPO}/figures</td></table>',
                            "text/plain": f"<pandas.io.formats.style.Styler at {address}>",
                        },
                    },
                ],
            },
        ],
    }


def test_the_same_results_give_the_same_bytes():
    a = publish.dumps(publish.clean(_raw_run("1", "a1b2c", "0x7f00aa", split=True), REPO))
    b = publish.dumps(publish.clean(_raw_run("2", "9f8e7", "0x7f11bb", split=False), REPO))
    assert a == b
    nb = json.loads(a)
    assert nb["metadata"] == {
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"},
        "papermill": {"parameters": {"profile": "smoke"}},
    }
    code = nb["cells"][2]
    assert [c["execution_count"] for c in nb["cells"][1:]] == [1, 2] and code["outputs"][-1]["execution_count"] == 2
    assert (
        nb["cells"][1]["id"] == "injected-parameters"
        and "".join(nb["cells"][1]["source"]) == '# Parameters\nprofile = "smoke"'
    )
    assert [o["output_type"] for o in code["outputs"]] == ["stream", "execute_result"]
    assert (
        "".join(code["outputs"][-1]["data"]["text/html"])
        == '<table id="T_t0001"><td id="T_t0001_row0_col0">figures</td></table>'
    )
    assert not publish.absolute_paths(nb)


def test_every_notebook_is_executed_with_every_figure_inline_and_no_absolute_path(executed_set):
    executed, figures, origin = executed_set
    manifest = json.loads((figures / "manifest.json").read_text(encoding="utf-8"))
    stems = [p.stem for p in notebooks.notebooks()]
    assert sorted(p.stem for p in executed.glob("*.ipynb")) == stems, f"{origin}: {executed} lacks a notebook"
    found = []
    for stem in stems:
        nb = json.loads((executed / f"{stem}.ipynb").read_text(encoding="utf-8"))
        profile = publish.parameters_of(nb).get("profile")
        assert publish.saved_figures(manifest, stem, profile), f"the manifest lists no figure of {stem} on {profile}"
        found += publish.problems(nb, manifest, stem)
    assert not found, f"{origin} executed notebooks in {executed}:\n" + "\n".join(found)


def test_publishing_is_deterministic(executed_set, tmp_path):
    """A published copy published again gives the same bytes (volatile fields are gone, ids fixed)."""
    executed, _, _ = executed_set
    for nb in sorted(executed.glob("*.ipynb")):
        again = publish.publish(nb, tmp_path)
        assert again.read_bytes() == nb.read_bytes(), f"{nb.name} changes when published again"
        meta = json.loads(nb.read_text(encoding="utf-8"))["metadata"]
        assert set(meta.get("papermill", {})) <= {"parameters"} and "version" not in meta.get("language_info", {})


def _ids(page: Path, cache: dict[Path, set[str]]) -> set[str]:
    if page not in cache:
        cache[page] = set(re.findall(r'\bid="([^"]+)"', page.read_text(encoding="utf-8")))
    return cache[page]


def test_the_book_reads_offline_in_chromium(executed_set, tmp_path):
    executed, figures, origin = executed_set
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed: `make browser` (the book extra: pip install -e '.[book]')")
    assert Path(CHROMIUM).exists(), "Chromium is not installed: `make browser` (apt-get install chromium)"

    out = tmp_path / "book"
    build = [sys.executable, str(REPO / "book" / "build.py"), "--executed", str(executed), "--figures", str(figures)]
    done = subprocess.run([*build, "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"make book failed on the {origin} notebooks:\n{done.stdout}\n{done.stderr}"
    site = out / "html"
    index = site / "index.html"
    ledger = json.loads((figures / "06_comparisons.json").read_text(encoding="utf-8"))["metrics"]["ledger"]
    shown = {
        p.stem: len(publish.shown_figures(json.loads(p.read_text(encoding="utf-8")))) for p in executed.glob("*.ipynb")
    }
    shots = os.environ.get("BDLIB_BOOK_SCREENSHOTS")

    problems: list[str] = []
    ids: dict[Path, set[str]] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"),  # a fresh user-data-dir
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900},
        )
        page = browser.pages[0] if browser.pages else browser.new_page()
        here = {"url": ""}
        page.on(
            "console",
            lambda m: problems.append(f"{here['url']}: console {m.type}: {m.text}") if m.type == "error" else 0,
        )
        page.on("pageerror", lambda e: problems.append(f"{here['url']}: page error: {e}"))
        page.on("requestfailed", lambda r: problems.append(f"{here['url']}: request failed: {r.url}"))

        def route(r):
            if urlsplit(r.request.url).scheme in ("file", "data", "blob", "about"):
                return r.continue_()
            problems.append(f"{here['url']}: a request leaves the site: {r.request.url}")
            return r.abort()

        page.route("**/*", route)
        todo, seen = [index], set()
        while todo:
            path = todo.pop(0)
            if path in seen:
                continue
            seen.add(path)
            here["url"] = str(path.relative_to(site))
            page.goto(path.as_uri(), wait_until="load")
            # Lazy images load as they scroll into view: scroll to the end, then wait for every image.
            page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
            page.wait_for_function("Array.from(document.images).every(i => i.complete)", timeout=10_000)
            images = page.evaluate("Array.from(document.images).map(i => [i.currentSrc || i.src, i.naturalWidth])")
            problems += [f"{here['url']}: image does not load: {src}" for src, width in images if not width > 0]
            stem = path.stem
            if path.parent.name == "notebooks" and stem in shown:
                outputs = page.evaluate("document.querySelectorAll('.cell_output img').length")
                if outputs < shown[stem]:
                    problems.append(f"{here['url']}: {outputs} output images, the notebook shows {shown[stem]}")
                if "Provenance of this executed notebook" not in page.content():
                    problems.append(f"{here['url']}: no provenance")
            if path == index:
                rows = page.evaluate("document.querySelectorAll('#claims-ledger tbody tr').length")
                if rows != len(ledger):
                    problems.append(f"index.html: the ledger table has {rows} rows, 06's ledger {len(ledger)}")
                page.wait_for_selector("#claims-ledger", state="visible")
            if shots and (path == index or stem == "06_comparisons"):
                Path(shots).mkdir(parents=True, exist_ok=True)
                page.evaluate("window.scrollTo(0, 0)")
                page.screenshot(path=str(Path(shots) / f"{stem}.png"), full_page=True)
            for href in page.evaluate("Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"):
                url = urlsplit(href)
                if url.scheme != "file":
                    continue  # links to the web are the reader's choice, not the site's assets
                target = Path(unquote(url.path))
                if not target.is_file():
                    problems.append(f"{here['url']}: broken link {href}")
                elif url.fragment and target.suffix == ".html" and unquote(url.fragment) not in _ids(target, ids):
                    problems.append(f"{here['url']}: link to a missing anchor {href}")
                elif target.suffix == ".html" and site in target.parents:
                    todo.append(target)
        browser.close()
    assert {p.stem for p in seen} >= {*shown, "index", "methods"}, f"pages not reached from the front page: {seen}"
    assert not problems, f"the book of the {origin} notebooks:\n" + "\n".join(dict.fromkeys(problems))

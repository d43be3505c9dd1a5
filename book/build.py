"""Build the companion's book: a static HTML site of the executed notebooks (``make book``).

    python book/build.py [--executed executed/] [--figures figures/] [--out build/book]

Generates the Sphinx sources under ``OUT/src`` and builds ``OUT/html`` (open ``OUT/html/index.html``):

* the front page: the README's story (its first section), the claims ledger rendered from
  ``FIGURES/06_comparisons.json`` (the ledger notebook 06 computed and saved: generated here,
  never typed), and one provenance row per notebook;
* a page per executed notebook (``EXECUTED/*.ipynb``, rendered as they are, never executed) that
  opens with its provenance: profile, seeds, parameters, date, the machine's training
  throughput and the code fingerprint its figures were made from;
* ``docs/methods.md``.

Provenance fields are read from the notebook's record in ``FIGURES/provenance.json``, else from
its entries in ``FIGURES/manifest.json``: ``code_fingerprint`` or ``code``, ``throughput`` and
``date``; the date, when neither has one, is the date of the commit that holds the executed
notebook unchanged. A field found nowhere reads "unknown".
"""

from __future__ import annotations

import argparse
import html
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

REPO = Path(__file__).resolve().parent.parent
CONF = Path(__file__).resolve().parent
UNKNOWN = "unknown"


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def readme_story(readme: Path) -> str:
    """The README's first section (what the companion is), without its title: the front page's story."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    body, fenced = [], False
    for line in lines[1:] if lines and lines[0].startswith("# ") else lines:
        if line.startswith("```"):
            fenced = not fenced
        if line.startswith("## ") and not fenced:
            break
        body.append(line)
    return "\n".join(body).strip() + "\n"


def ledger_html(comparisons: Path) -> str:
    """The claims ledger of notebook 06's saved results as an HTML table (``id="claims-ledger"``),
    with the columns of ``bdlib.study.claims.table``."""
    from bdlib.study import claims

    data = _load(comparisons)
    entries = data.get("metrics", {}).get("ledger")
    if not entries:
        raise SystemExit(f"book: no claims ledger in {comparisons}: run notebook 06 (make figures) first")
    frame = claims.table(entries).data
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for _, row in frame.iterrows():
        cells = []
        for col, value in row.items():
            cls = f' class="verdict verdict-{html.escape(str(value))}"' if col == "verdict" else ""
            cells.append(f"<td{cls}>{html.escape(str(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (
        f'<table id="claims-ledger" class="ledger docutils">\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
        + "\n".join(rows)
        + "\n</tbody>\n</table>\n"
    )


def _git_date(path: Path) -> str | None:
    """The date of the last commit of ``path`` when it is committed and unchanged since."""
    try:
        rel = path.resolve().relative_to(REPO)
    except ValueError:
        return None
    try:
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", str(rel)], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        date = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", str(rel)], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return date if date and not changed else None


def _throughput(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{value:,.0f} training images/s"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}: {_throughput(v) if isinstance(v, (int, float)) else v}" for k, v in value.items())
    return str(value)


def provenance(stem: str, nb: Mapping, manifest: Mapping, record: Mapping, path: Path) -> dict[str, str]:
    """One notebook's provenance, in words (see the module for where each field is read)."""
    params = dict(nb.get("metadata", {}).get("papermill", {}).get("parameters", {}))
    profile = str(params.get("profile", UNKNOWN))
    seeds: Any = params.get("seeds")
    if seeds is None and profile != UNKNOWN:
        try:
            from bdlib.profiles import resolve

            seeds = list(resolve(profile, overrides=params.get("overrides") or None).seeds)
        except Exception:  # an unknown profile or override: say so rather than guess
            seeds = None
    mine = [e for e in manifest.values() if isinstance(e, Mapping) and e.get("notebook") == stem]

    def field(*names: str) -> Any:
        """The notebook's record first (one per run), then its figures' manifest entries."""
        for e in (record, *mine):
            for n in names:
                if e.get(n) not in (None, ""):
                    return e[n]
        return None

    fingerprint = field("code_fingerprint", "code")
    throughput = field("throughput")
    date = field("date") or _git_date(path)
    return {
        "notebook": stem,
        "profile": profile,
        "seeds": ", ".join(map(str, seeds)) if seeds else UNKNOWN,
        "parameters": json.dumps(params, sort_keys=True) if params else UNKNOWN,
        "date": str(date) if date else f"{UNKNOWN} (not committed)",
        "training throughput": _throughput(throughput) if throughput is not None else UNKNOWN,
        "code fingerprint": str(fingerprint) if fingerprint else UNKNOWN,
    }


def provenance_cell(prov: Mapping[str, str]) -> dict:
    """A markdown cell holding the provenance as a table in an admonition."""
    rows = "\n".join(
        f"<tr><th>{html.escape(k)}</th><td><code>{html.escape(v)}</code></td></tr>"
        for k, v in prov.items()
        if k != "notebook"
    )
    text = (
        ":::{admonition} Provenance of this executed notebook\n:class: note\n\n"
        f'<table class="provenance">\n{rows}\n</table>\n\n'
        "Regenerated with the figures (`make figures`), never edited by hand; the source is "
        f"`notebooks/{prov['notebook']}.ipynb`.\n:::\n"
    )
    return {"cell_type": "markdown", "id": "book-provenance", "metadata": {}, "source": text}


def generate(executed: Path, figures: Path, src: Path) -> list[str]:
    """Write the Sphinx sources under ``src``; returns the notebook stems."""
    notebooks = sorted(executed.glob("[0-9][0-9]_*.ipynb"))
    if not notebooks:
        raise SystemExit(
            f"book: no executed notebook in {executed}: `make figures` writes them "
            "(or pass --executed DIR, e.g. a runner's --out)"
        )
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    (src / "docs").mkdir()
    manifest, records = _load(figures / "manifest.json"), _load(figures / "provenance.json")
    provs = []
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        prov = provenance(path.stem, nb, manifest, records.get(path.stem, {}), path)
        provs.append(prov)
        cells = nb["cells"]
        at = 1 if cells and cells[0]["cell_type"] == "markdown" else 0  # after the title cell
        cells.insert(at, provenance_cell(prov))
        (src / "notebooks" / path.name).write_text(json.dumps(nb, indent=1, sort_keys=True), encoding="utf-8")
    shutil.copy(REPO / "docs" / "methods.md", src / "docs" / "methods.md")
    ledger_file = figures / "06_comparisons.json"
    profile = _load(ledger_file).get("profile", UNKNOWN)
    table_rows = "\n".join(
        f"| [{p['notebook']}](notebooks/{p['notebook']}.ipynb) | {p['profile']} | {p['seeds']} | {p['date']} "
        f"| {p['training throughput']} | `{p['code fingerprint']}` |"
        for p in provs
    )
    toc = "\n".join(f"notebooks/{p['notebook']}" for p in provs)
    index = f"""# The NT-ML / NONE / MCLDef companion

{readme_story(REPO / "README.md")}
## The claims ledger

Each claim of the three abstracts, and this companion's own bar, with the verdict computed from
the results of notebook 06 (profile `{profile}`; `{ledger_file.name}`, rendered when the book was
built, never typed). Notebook [06_comparisons](notebooks/06_comparisons.ipynb) explains it;
[the methods](docs/methods.md#the-claims-ledger) give its rules.

```{{raw}} html
{ledger_html(ledger_file)}```

## The notebooks

Each page is the notebook executed by `make figures`, outputs as they were: figures inline,
tables printed. Provenance of each:

| notebook | profile | seeds | date | training throughput | code fingerprint |
|---|---|---|---|---|---|
{table_rows}

```{{toctree}}
:caption: Notebooks
:maxdepth: 1

{toc}
```

```{{toctree}}
:caption: Reference
:maxdepth: 1

docs/methods
```
"""
    (src / "index.md").write_text(index, encoding="utf-8")
    return [p["notebook"] for p in provs]


def build(executed: Path, figures: Path, out: Path, quiet: bool = True) -> Path:
    """Generate the sources and run Sphinx (warnings are errors); returns ``out/html/index.html``."""
    src, html_dir = out / "src", out / "html"
    generate(executed, figures, src)
    if html_dir.exists():
        shutil.rmtree(html_dir)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-c", str(CONF), "-W", "--keep-going", "-E"]
    cmd += ["-q"] if quiet else []
    cmd += ["-d", str(out / "doctrees"), str(src), str(html_dir)]
    done = subprocess.run(cmd)
    if done.returncode != 0:
        raise SystemExit(f"book: sphinx-build failed (exit {done.returncode}); its messages are above")
    return html_dir / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--executed", type=Path, default=REPO / "executed", help="the executed notebooks")
    parser.add_argument("--figures", type=Path, default=REPO / "figures", help="their figures' directory")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "book", help="where the site goes")
    parser.add_argument("-v", "--verbose", action="store_true", help="Sphinx's progress messages too")
    args = parser.parse_args(argv)
    index = build(args.executed.resolve(), args.figures.resolve(), args.out.resolve(), quiet=not args.verbose)
    print(f"book: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

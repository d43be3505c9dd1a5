"""Executed notebooks for the repository: the runner's executed copy made deterministic and portable.

The runner (``bdlib.runner.cli``) writes each executed notebook to ``build/executed/``; :func:`publish`
turns one into the copy committed under ``executed/`` (:data:`PUBLISHED_DIR`), regenerated with the
figures and never edited by hand:

* no volatile metadata: papermill's and nbclient's timestamps and durations, the input and output
  paths, the interpreter's version go; the run's parameters stay (``metadata.papermill.parameters``);
  execution counts run 1, 2, … over the executed code cells; the cell ids papermill draws at random
  are replaced by ids from each cell's source; pandas' random Styler ids are numbered and an
  object's memory address (``<… at 0x7f…>``) dropped; consecutive stream outputs are joined and
  carriage-return progress collapsed (how a stream is split depends on timing);
* no absolute path of the machine: the project directory, the interpreter's and site-packages'
  directories, the home and temporary directories are replaced (a staged figure's path becomes the
  figures directory it was moved to), in every text output, traceback included;
* the runner's live progress lines (``bdlib_progress`` displays: wall times) are dropped;
* every inline PNG is re-encoded as a 256-colour palette PNG (a third of the size; the full-colour
  PNG and the PDF are in ``figures/``); a figure keeps its ``bdlib_figure`` name in the output's
  metadata, which is how :func:`shown_figures` finds it.

The same results give the same bytes. :func:`saved_figures` lists the figures a notebook saved
(``figures/manifest.json``), and :func:`problems` says what a published copy lacks or leaks.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import re
import site
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any, Mapping

from bdlib import paths

PUBLISHED_DIR = "executed"  # under the project directory, committed
INJECTED_ID = "injected-parameters"  # papermill's injected cell's id (papermill draws a random one)
PALETTE_COLOURS = 256

_STAGING = re.compile(r"/\.([\w.-]+?)-staging-[\w-]+(?=/|\b)")  # the runner's staging dir -> its target
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+>")  # an object's default repr: <pandas...Styler at 0x7f...>
_STYLER_ID = re.compile(r"T_([0-9a-f]{5})(?![0-9a-zA-Z])")  # pandas Styler's uuid4().hex[:5]
# What counts as an absolute path of the machine in a published notebook (:func:`absolute_paths`).
_ABSOLUTE = re.compile(r"(?<![\w.~<>/-])/(?:home|root|tmp|work|usr|opt|var|srv|mnt|Users|private|nix)/[^\s'\"<>)]*")


def _prefixes(project: Path) -> list[tuple[str, str]]:
    """(absolute prefix, replacement), the longest prefixes first."""
    pairs: dict[str, str] = {}
    for sp in {*site.getsitepackages(), site.getusersitepackages(), sysconfig.get_paths()["purelib"]}:
        pairs[os.path.realpath(sp)] = "<site-packages>"
        pairs[os.path.abspath(sp)] = "<site-packages>"
    stdlib = sysconfig.get_paths()["stdlib"]
    pairs[os.path.realpath(stdlib)] = "<python>"
    pairs[os.path.abspath(stdlib)] = "<python>"
    for prefix in (sys.prefix, sys.base_prefix, sys.exec_prefix):
        pairs.setdefault(os.path.abspath(prefix), "<python-prefix>")
    for root in (os.path.abspath(project), os.path.realpath(project)):
        pairs[root] = ""  # the project's own files: paths relative to it
    home = os.path.expanduser("~")
    if home not in ("/", ""):
        pairs.setdefault(os.path.abspath(home), "~")
    for tmp in {tempfile.gettempdir(), "/tmp", "/var/tmp"}:
        pairs.setdefault(os.path.realpath(tmp), "<tmp>")
        pairs.setdefault(os.path.abspath(tmp), "<tmp>")
    return sorted(((p, r) for p, r in pairs.items() if p not in ("/", "")), key=lambda pr: -len(pr[0]))


def scrub(text: str, project: Path | None = None) -> str:
    """``text`` without the machine's absolute paths: the project's own relative to it, others named
    (``<site-packages>/torch/…``, ``<python>/…``, ``~/…``, ``<tmp>/…``); a runner's staging
    directory (``.figures-staging-x1y2``) becomes the figures directory it was moved to."""
    text = _STAGING.sub(r"/\1", text)
    for prefix, repl in _prefixes(Path(project or paths.project_dir())):
        if prefix not in text:
            continue
        # prefix/...: replaced with repl/...; the project itself with a relative path (./ or .)
        text = re.sub(
            re.escape(prefix) + r"(/|(?![\w.-]))",
            lambda m, r=repl: (r + m.group(1)) if r else ("" if m.group(1) == "/" else "."),
            text,
        )
    return text


def absolute_paths(nb: Mapping) -> list[str]:
    """Absolute paths of a machine found in a notebook's outputs and metadata (none in a published copy)."""
    found: list[str] = []

    def walk(value: Any, where: str) -> None:
        if isinstance(value, str):
            found.extend(f"{where}: {m.group(0)}" for m in _ABSOLUTE.finditer(value))
        elif isinstance(value, list):
            if value and all(isinstance(v, str) for v in value):
                walk("".join(value), where)
            else:
                for v in value:
                    walk(v, where)
        elif isinstance(value, dict):
            for k, v in value.items():
                if not str(k).startswith("image/"):
                    walk(v, where)

    walk(nb.get("metadata", {}), "notebook metadata")
    for i, cell in enumerate(nb.get("cells", [])):
        walk(cell.get("outputs", []), f"cell {i} outputs")
        walk(cell.get("metadata", {}), f"cell {i} metadata")
    return found


def _text(value: Any) -> str:
    return "".join(value) if isinstance(value, list) else value


def _palette_png(b64: str) -> str:
    """A PNG re-encoded with at most :data:`PALETTE_COLOURS` colours (no dithering), on white."""
    from PIL import Image

    im = Image.open(io.BytesIO(base64.b64decode(b64)))
    im.load()
    if im.mode == "P" and len(im.getcolors(PALETTE_COLOURS + 1) or []) <= PALETTE_COLOURS:
        return b64
    rgba = im.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    bg.alpha_composite(rgba)
    quant = bg.convert("RGB").quantize(PALETTE_COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    out = io.BytesIO()
    quant.save(out, format="PNG", optimize=True)
    return base64.b64encode(out.getvalue()).decode("ascii")


def _collapse_cr(text: str) -> str:
    """What a terminal shows of carriage-return progress: per line, the text after its last ``\\r``."""
    if "\r" not in text:
        return text
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n"))


def _outputs(outputs: list[dict], count: int | None, project: Path) -> list[dict]:
    kept: list[dict] = []
    for out in outputs:
        out = dict(out)
        kind = out.get("output_type")
        if kind in ("display_data", "update_display_data") and out.get("metadata", {}).get("bdlib_progress"):
            continue  # the runner's live progress line: wall times, and stale once the cell is done
        if kind == "stream":
            text = _collapse_cr(scrub(_text(out.get("text", "")), project))
            if kept and kept[-1].get("output_type") == "stream" and kept[-1].get("name") == out.get("name"):
                kept[-1]["text"] = _collapse_cr(kept[-1]["text"] + text)
                continue
            out["text"] = text
        elif kind == "error":
            out["evalue"] = scrub(out.get("evalue", ""), project)
            out["traceback"] = [scrub(line, project) for line in out.get("traceback", [])]
        if "data" in out:
            data = {}
            for mime, value in out["data"].items():
                if mime == "image/png":
                    data[mime] = _palette_png(_text(value).replace("\n", ""))
                elif mime.startswith("image/") and mime != "image/svg+xml":
                    data[mime] = value
                elif isinstance(value, (str, list)):
                    data[mime] = scrub(_text(value), project)
                    if mime == "text/plain":
                        data[mime] = _ADDRESS.sub(">", data[mime])
                else:
                    data[mime] = json.loads(scrub(json.dumps(value), project))
            out["data"] = data
            out["metadata"] = json.loads(scrub(json.dumps(out.get("metadata", {})), project))
        if kind == "execute_result":
            out["execution_count"] = count
        kept.append(out)
    return [o for o in kept if not (o.get("output_type") == "stream" and not o["text"])]


def _number_styler_ids(nb: dict) -> None:
    """pandas' Styler names its table ``T_<5 random hex digits>``: number them in order of appearance."""
    names: dict[str, str] = {}
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            html = out.get("data", {}).get("text/html")
            if not html:
                continue
            for uid in _STYLER_ID.findall(html):
                names.setdefault(uid, f"t{len(names) + 1:04d}")
            out["data"]["text/html"] = _STYLER_ID.sub(lambda m: f"T_{names.get(m.group(1), m.group(1))}", html)


def clean(nb: Mapping, project: Path | None = None) -> dict:
    """A deterministic, portable copy of an executed notebook (a dict in nbformat 4); see the module."""
    project = Path(project or paths.project_dir())
    nb = json.loads(json.dumps(nb))  # a deep copy
    meta = nb.get("metadata", {})
    kept_meta: dict[str, Any] = {}
    if "kernelspec" in meta:
        kept_meta["kernelspec"] = meta["kernelspec"]
    info = meta.get("language_info", {})
    kept_meta["language_info"] = {k: info[k] for k in ("name", "file_extension", "mimetype") if k in info}
    pm = meta.get("papermill", {})
    if "parameters" in pm:
        kept_meta["papermill"] = {"parameters": json.loads(scrub(json.dumps(pm["parameters"]), project))}
    for k, v in meta.items():  # the notebook's own metadata (not the run's)
        if k not in ("kernelspec", "language_info", "papermill", "widgets") and k not in kept_meta:
            kept_meta[k] = v
    nb["metadata"] = kept_meta
    count, ids = 0, set()
    for cell in nb["cells"]:
        if "id" in cell or nb.get("nbformat_minor", 0) >= 5:
            # The sources (nbformat 4.4) have no cell ids: papermill draws random ones. An id from
            # the cell's kind and source instead: stable across runs, and a new cell moves no other.
            digest = hashlib.sha256(f"{cell['cell_type']}\0{_text(cell.get('source', ''))}".encode()).hexdigest()
            base, n = digest[:8], 1
            while (cell_id := base if n == 1 else f"{base}-{n}") in ids:
                n += 1
            ids.add(cell_id)
            cell["id"] = cell_id
        cm = cell.get("metadata", {})
        for volatile in ("execution", "papermill", "collapsed", "scrolled"):
            cm.pop(volatile, None)
        if cm.get("tags") == []:
            cm.pop("tags")
        if "injected-parameters" in cm.get("tags", []):
            cell["id"] = INJECTED_ID
            # papermill ends the cell's source with a newline, which `ruff format` (make lint) removes
            cell["source"] = _text(cell.get("source", "")).rstrip("\n")
        if cell["cell_type"] != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        if cell.get("execution_count") is not None:
            count += 1
            cell["execution_count"] = count
        cell["outputs"] = _outputs(cell.get("outputs", []), cell.get("execution_count"), project)
    _number_styler_ids(nb)
    return nb


def dumps(nb: Mapping) -> str:
    """The notebook as nbformat writes it (sorted keys, one-space indent), newline-terminated."""
    import nbformat

    text = nbformat.writes(nbformat.from_dict(nb), version=4)
    return text if text.endswith("\n") else text + "\n"


def publish(executed_path: str | os.PathLike[str], dest_dir: str | os.PathLike[str] | None = None) -> Path:
    """Write the clean copy (:func:`clean`) of the executed notebook at ``executed_path`` to
    ``dest_dir`` (default ``executed/`` of the project), under the same file name; returns its path.
    The file is rewritten only when its bytes change."""
    src = Path(executed_path)
    dest = Path(dest_dir) if dest_dir is not None else paths.project_dir() / PUBLISHED_DIR
    text = dumps(clean(json.loads(src.read_text(encoding="utf-8"))))
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / src.name
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, target)
    return target


def saved_figures(manifest: Mapping[str, Mapping], notebook: str, profile: str | None = None) -> list[str]:
    """The figures (names with a PNG) that ``notebook`` saved, per ``figures/manifest.json``
    (``bdlib.figures.save`` records each with its notebook and profile), sorted."""
    return sorted(
        name
        for name, entry in manifest.items()
        if isinstance(entry, Mapping)
        and entry.get("notebook") == notebook
        and (profile is None or entry.get("profile") == profile)
        and any(str(f).endswith(".png") for f in entry.get("files", []))
    )


def shown_figures(nb: Mapping) -> list[str]:
    """The figures a notebook shows inline: outputs with a PNG and a ``bdlib_figure`` name."""
    return sorted(
        {
            out["metadata"]["bdlib_figure"]
            for cell in nb.get("cells", [])
            for out in cell.get("outputs", [])
            if out.get("metadata", {}).get("bdlib_figure") and "image/png" in out.get("data", {})
        }
    )


def parameters_of(nb: Mapping) -> dict:
    """The parameters the notebook was run with (papermill's record)."""
    return dict(nb.get("metadata", {}).get("papermill", {}).get("parameters", {}))


def problems(nb: Mapping, manifest: Mapping[str, Mapping], notebook: str) -> list[str]:
    """What a published notebook lacks or leaks: a figure it saved on its profile not shown inline,
    an absolute path, an error output, a warning printed."""
    profile = parameters_of(nb).get("profile")
    shown = set(shown_figures(nb))
    found = [
        f"{notebook}: figure {name} is saved (manifest, profile {profile}) but not shown inline"
        for name in saved_figures(manifest, notebook, profile)
        if name not in shown
    ]
    found += [f"{notebook}: absolute path in {p}" for p in absolute_paths(nb)]
    found += [
        f"{notebook}: cell {i} ends in an error ({out.get('ename')})"
        for i, cell in enumerate(nb.get("cells", []))
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    found += [f"{notebook}: warning in {line}" for line in warnings_in(nb) if re.search(r"Warning\b", line)]
    return found


def warnings_in(nb: Mapping) -> list[str]:
    """The lines a notebook's cells wrote to stderr (``cell i: …``): warnings land there."""
    lines: list[str] = []
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                text = _text(out.get("text", ""))
                lines += [f"cell {i}: {line.strip()}" for line in text.splitlines() if line.strip()]
    return lines


__all__ = [
    "PUBLISHED_DIR",
    "absolute_paths",
    "clean",
    "dumps",
    "parameters_of",
    "problems",
    "publish",
    "saved_figures",
    "scrub",
    "shown_figures",
    "warnings_in",
]

"""The project's own documents: every citation of the methods document resolves to a file in the repo."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
METHODS = REPO / "docs" / "methods.md"
CITED_IN = ["bdlib", "notebooks", "benchmarks", "tests", "README.md"]


def _files():
    for root in CITED_IN:
        path = REPO / root
        yield from (
            [path]
            if path.is_file()
            else (p for p in path.rglob("*") if p.suffix in (".py", ".ipynb", ".md") and p.is_file())
        )


def test_every_methods_citation_points_at_docs_methods_md():
    bare, cited = [], 0
    for path in _files():
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8")
        bare += [
            f"{path.relative_to(REPO)}: …{text[max(0, m.start() - 30) : m.end()]}"
            for m in re.finditer(r"(?<![\w/])methods\.md", text)
        ]
        cited += len(re.findall(r"docs/methods\.md", text))
    assert not bare, "citations of a methods.md that does not exist:\n" + "\n".join(bare)
    assert cited >= 30 and METHODS.is_file()


def test_methods_document_has_the_sections_the_code_and_the_lead_rely_on():
    headings = re.findall(r"^#{2,3} (.+)$", METHODS.read_text(encoding="utf-8"), re.M)
    for needed in (
        "Threat model and metrics",
        "Profiles",
        "BadNets",
        "Blended",
        "Trojan",
        "SIG",
        "WaNet",
        "Narcissus",
        "NT-ML (a reconstruction)",
        "NT-ML readings",
        "NONE",
        "MCLDef",
        "FT",
        "NAD",
        "ANP",
        "I-BAU",
        "The comparison protocol",
        "Differences from the official code",
    ):
        assert needed in headings, f"docs/methods.md has no section {needed!r}"


def test_methods_document_names_every_params_field():
    import dataclasses

    from bdlib.attacks import REGISTRY as ATTACKS
    from bdlib.defenses import REGISTRY as DEFENSES

    text = METHODS.read_text(encoding="utf-8")
    missing = [
        f"{name}.{f.name}"
        for name, m in {**ATTACKS, **DEFENSES}.items()
        for f in dataclasses.fields(m.Params)
        if f.name != "rate_of" and f"`{f.name}`" not in text
    ]
    assert not missing, f"docs/methods.md does not describe: {', '.join(missing)}"

"""The repository is self-contained: nothing points outside it (no path into the developers' spec folder,
no document it does not ship), and every ``docs/...`` page the code or the data files name exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_TOP = {".git", "results", "report", ".pytest_cache"}  # run outputs at the top level, not shipped
SKIP_ANY = {"__pycache__", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".csv", ".sh", ".txt", ".cff", ".cfg", ".ini", ".yml", ".yaml", ".json", ""}
# A spec document named without a path (the developers' specs are not shipped; docs/ holds their facts).
BARE_SPEC = re.compile(r"(?<![\w/.-])(protocol|losses|reference-results|methods-wave2|DESIGN)\.md")
DOCS_REF = re.compile(r"docs/[\w./-]+?\.md")
OUTSIDE = "shared" + "/"  # spelled in two parts, so that this file passes the grep it stands for


def repo_text_files() -> list[Path]:
    out = []
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP_TOP or rel.parts[0].startswith(".venv") or any(
                part in SKIP_ANY or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES and path.stat().st_size < 2_000_000:
            out.append(path)
    return out


def test_no_file_points_outside_the_repository() -> None:
    files = repo_text_files()
    assert len(files) > 100 and ROOT / "README.md" in files and ROOT / "spmlbench/report/tables.py" in files
    offenders = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for n, line in enumerate(text.splitlines(), 1):
            if OUTSIDE in line or BARE_SPEC.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not offenders, "\n".join(offenders)


def docs_named_in(folder: Path) -> dict[str, str]:
    """``docs/...md`` page -> the first file below ``folder`` (code, data) that names it."""
    named: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in {".py", ".toml", ".csv"}:
            for ref in DOCS_REF.findall(path.read_text(encoding="utf-8")):
                named.setdefault(ref, str(path.relative_to(ROOT)))
    return named


def test_every_docs_page_the_code_and_data_name_exists() -> None:
    named = docs_named_in(ROOT / "spmlbench")  # code and its shipped data (spmlbench/data_manifests)
    missing = {ref: where for ref, where in named.items() if not (ROOT / ref).is_file()}
    assert not missing, missing


def test_the_report_notes_name_the_shipped_pages() -> None:
    # the report's caveats and paired-table notes send the reader to these pages
    assert {"docs/protocol.md", "docs/published-results.md"} <= set(docs_named_in(ROOT / "spmlbench" / "report"))

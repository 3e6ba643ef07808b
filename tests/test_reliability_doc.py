"""docs/reliability.md: at least 50 faults, each naming tests that exist and assert what the row claims."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# pytest.raises: an SpmlError is one line by construction; splitlines() == [...]: the whole stderr compared
ONE_LINE_EVIDENCE = ("one_line(", "one_line_error(", "pytest.raises(", "len(lines) == 1", '"Traceback" not in', ".splitlines() == [", ".splitlines()[-1:] == [")


def rows() -> list[str]:
    """The numbered rows of the table."""
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]


def body_of(file: str, name: str) -> str:
    """The source of test ``name`` in ``file`` (to its next top-level statement); '' when it is missing."""
    source = (ROOT / file).read_text(encoding="utf-8")
    found = re.search(rf"^def {name}\(.*?(?=^(?:def |class |@|END))", source + "\nEND", re.M | re.S)
    return found.group(0) if found else ""


def with_helpers(file: str, name: str) -> str:
    """The body of test ``name`` and of the helpers of ``file`` it calls (one level: ``load(...)``)."""
    body = body_of(file, name)
    helpers = [body_of(file, h) for h in sorted(set(re.findall(r"\b([a-z_]\w*)\(", body)) - {name})]
    return "\n".join([body, *helpers])


def test_every_listed_fault_names_existing_tests() -> None:
    assert len(rows()) >= 50
    for row in rows():
        refs = re.findall(r"(tests/[\w/]+\.py)::(\w+)", row.rsplit("|", 2)[-2])
        assert refs, row
        for file, name in refs:
            assert body_of(file, name), f"{file}::{name} (row: {row[:60]})"


def test_each_row_claim_is_what_its_tests_assert() -> None:
    """A row that says "exit N" names a test asserting that exit code; one that says "one line" or "no
    traceback" names a test asserting one error line (``one_line``), an SpmlError, or no traceback."""
    checked = 0
    for row in rows():
        sees, tests = row.rsplit("|", 3)[-3:-1]
        bodies = [with_helpers(f, n) for f, n in re.findall(r"(tests/[\w/]+\.py)::(\w+)", tests)]
        for code in re.findall(r"\bexit (\d+)\b", sees):
            pattern = rf"(code|returncode)\s*==\s*{code}\b" + (r"|one_line\(" if code == "2" else "")
            assert any(re.search(pattern, b) for b in bodies), f"no test asserts exit {code}: {row[:80]}"
            checked += 1
        if re.search(r"one[- ]line|no traceback", sees):
            assert any(e in b for b in bodies for e in ONE_LINE_EVIDENCE), f"no test asserts one line: {row[:80]}"
            checked += 1
    assert checked >= 40

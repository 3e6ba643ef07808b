"""Render a :class:`Report` as console (rich), Markdown, LaTeX, CSV or HTML."""

from __future__ import annotations

import dataclasses
import html
import io
import textwrap
from pathlib import Path

from rich.console import Console
from rich.table import Table as RichTable

from spmlbench.report.tables import Table

FORMATS = ("console", "md", "latex", "csv", "html")
EXTENSIONS = {"md": "md", "latex": "tex", "html": "html"}


@dataclasses.dataclass
class Report:
    """Everything a report shows: tables (with notes), figures, and what it was built from."""

    title: str
    description: str
    tables: list[Table]
    provenance: list[str]
    figures: list[Path] = dataclasses.field(default_factory=list)
    figure_notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)  # one line each, for stderr


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(report: Report) -> str:
    """Markdown: one section per table (pipe table, notes as a list), figures, provenance."""
    out = [f"# {report.title}", ""]
    if report.description:
        out += [report.description, ""]
    for t in report.tables:
        out += [f"## {t.title}", ""]
        out.append("| " + " | ".join(_md_escape(h) for h in t.header) + " |")
        out.append("| " + " | ".join("---" for _ in t.header) + " |")
        for row in t.rows:
            out.append("| " + " | ".join(f"**{_md_escape(c.text)}**" if c.bold else _md_escape(c.text) for c in row) + " |")
        out.append("")
        out += [f"- {n}" for n in t.notes]
        out.append("")
    if report.figures or report.figure_notes:
        out += ["## Figures", ""]
        out += [f"![{p.stem}]({p.as_posix()})" for p in report.figures]
        out += [f"- {n}" for n in report.figure_notes]
        out.append("")
    out += ["## Provenance", ""]
    out += [f"- {line.strip().removeprefix('- ')}" if not line.startswith("  ") else f"  {line.strip()}" for line in report.provenance]
    return "\n".join(out) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
          "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
          "±": r"$\pm$", "—": "---", "−": "$-$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "≥": r"$\geq$",
          "≤": r"$\leq$", "<": "$<$", ">": "$>$", "–": "--", "×": r"$\times$", "·": r"$\cdot$", "√": r"$\surd$",
          "∞": r"$\infty$", "χ": r"$\chi$", "²": r"$^2$", "α": r"$\alpha$", "š": r"\v{s}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX specials and map the report's symbols (±, —, Δ, ...) to LaTeX."""
    return "".join(_LATEX.get(ch, ch) for ch in text)


def to_latex(report: Report) -> str:
    """LaTeX fragment: a ``tabular`` per table (best cells in ``\\textbf``), notes and provenance as lists."""
    out = [f"% {report.title}", f"\\section*{{{latex_escape(report.title)}}}"]
    if report.description:
        out.append(latex_escape(report.description))
    for t in report.tables:
        out += ["", f"\\subsection*{{{latex_escape(t.title)}}}", "\\begin{tabular}{l" + "r" * (len(t.header) - 1) + "}", "\\hline"]
        out.append(" & ".join(latex_escape(h) for h in t.header) + r" \\")
        out.append("\\hline")
        for row in t.rows:
            out.append(" & ".join(f"\\textbf{{{latex_escape(c.text)}}}" if c.bold else latex_escape(c.text) for c in row) + r" \\")
        out += ["\\hline", "\\end{tabular}"]
        if t.notes:
            out += ["\\begin{itemize}"] + [f"\\item {latex_escape(n)}" for n in t.notes] + ["\\end{itemize}"]
    if report.figure_notes:
        out += ["", "\\subsection*{Figures}", "\\begin{itemize}"]
        out += [f"\\item {latex_escape(n)}" for n in report.figure_notes] + ["\\end{itemize}"]
    out += ["", "\\subsection*{Provenance}", "\\begin{itemize}"]
    out += [f"\\item {latex_escape(line.strip())}" for line in report.provenance] + ["\\end{itemize}"]
    return "\n".join(out) + "\n"


def to_html(report: Report) -> str:
    """A standalone HTML page: a ``<table>`` per table, best cells in ``<strong>``."""
    e = html.escape
    out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{e(report.title)}</title>",
           "<style>table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}"
           "td:first-child{text-align:left}</style></head><body>", f"<h1>{e(report.title)}</h1>"]
    if report.description:
        out.append(f"<p>{e(report.description)}</p>")
    for t in report.tables:
        out += [f"<h2>{e(t.title)}</h2>", "<table>", "<tr>" + "".join(f"<th>{e(h)}</th>" for h in t.header) + "</tr>"]
        for row in t.rows:
            out.append("<tr>" + "".join(f"<td><strong>{e(c.text)}</strong></td>" if c.bold else f"<td>{e(c.text)}</td>" for c in row) + "</tr>")
        out.append("</table>")
        if t.notes:
            out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in t.notes) + "</ul>")
    if report.figures or report.figure_notes:
        out.append("<h2>Figures</h2>")
        out += [f"<p><img src=\"{e(p.as_posix())}\" alt=\"{e(p.stem)}\" style=\"max-width:100%\"></p>" for p in report.figures]
        out.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in report.figure_notes) + "</ul>")
    out.append("<h2>Provenance</h2><ul>" + "".join(f"<li>{e(line.strip())}</li>" for line in report.provenance) + "</ul>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def to_csv(report: Report) -> dict[str, str]:
    """One CSV text per table, keyed by table key: the tidy numbers behind the table."""
    out = {}
    for t in report.tables:
        buf = io.StringIO()
        frame = t.data.copy()
        for col in frame.columns:
            if frame[col].map(lambda v: isinstance(v, (list, dict))).any():
                frame[col] = frame[col].map(str)
        frame.to_csv(buf, index=False, lineterminator="\n")
        out[t.key] = buf.getvalue()
    return out


def _header_lines(table: Table, i: int) -> str:
    """Column ``i``'s header wrapped at word boundaries to the width of its widest cell (or longest word)."""
    cells = [len(row[i].text) for row in table.rows if i < len(row)]
    words = [len(w) for w in table.header[i].split()] or [0]
    return textwrap.fill(table.header[i], width=max([*cells, *words, 1]), break_long_words=False) or table.header[i]


def _need(table: Table, i: int) -> int:
    """Width column ``i`` takes on the console: its widest cell or header line, padding and border."""
    cells = [len(row[i].text) for row in table.rows if i < len(row)]
    return max([*cells, *(len(line) for line in _header_lines(table, i).splitlines()), 1]) + 3


def column_blocks(table: Table, width: int) -> list[list[int]]:
    """Column indices of the blocks a table is printed in at ``width`` columns: the first (label) column and as
    many others as fit without cutting a cell; a table that fits is one block."""
    blocks: list[list[int]] = []
    current, used = [0], 1 + _need(table, 0)
    for i in range(1, len(table.header)):
        if len(current) > 1 and used + _need(table, i) > width:
            blocks.append(current)
            current, used = [0], 1 + _need(table, 0)
        current.append(i)
        used += _need(table, i)
    blocks.append(current)
    return blocks


def print_table(table: Table, console: Console) -> None:
    """One table on the console: its title on its own line, the columns in blocks that fit the console's width
    (no cell is cut: cells never wrap, headers wrap at word boundaries), then its notes."""
    console.print(f"[bold]{_rich_escape(table.title)}[/bold]")  # on its own line: a title wraps to the table's width
    blocks = column_blocks(table, console.width)
    for b, cols in enumerate(blocks):
        rt = RichTable()
        for i in cols:
            rt.add_column(_rich_escape(_header_lines(table, i)), justify="left" if i == 0 else "right", no_wrap=True)
        for row in table.rows:
            rt.add_row(*[f"[bold green]{_rich_escape(row[i].text)}[/bold green]" if row[i].bold
                         else _rich_escape(row[i].text) for i in cols])
        if len(blocks) > 1:
            console.print(f"  (columns, part {b + 1} of {len(blocks)})", highlight=False)
        console.print(rt)
    for n in table.notes:
        console.print(f"  • {n}", markup=False, highlight=False)


def to_console(report: Report, console: Console) -> None:
    """Print the report with rich tables (wide tables in column blocks that fit the console)."""
    console.print(f"[bold]{report.title}[/bold]")
    if report.description:
        console.print(report.description, markup=False)
    for t in report.tables:
        print_table(t, console)
    for p in report.figures:
        console.print(f"figure: {p}", markup=False, highlight=False)
    for n in report.figure_notes:
        console.print(f"  • {n}", markup=False, highlight=False)
    console.print("[bold]Provenance[/bold]")
    for line in report.provenance:
        console.print(line, markup=False, highlight=False)


def _rich_escape(text: str) -> str:
    return text.replace("[", "\\[")


def render_text(report: Report, fmt: str) -> str:
    """Markdown, LaTeX or HTML text of a report."""
    if fmt == "md":
        return to_markdown(report)
    if fmt == "latex":
        return to_latex(report)
    if fmt == "html":
        return to_html(report)
    raise ValueError(f"no text renderer for {fmt!r}")

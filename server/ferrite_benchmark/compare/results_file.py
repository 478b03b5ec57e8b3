"""Replacing the generated section of bench/RESULTS.md between its marker comments.

Everything outside the markers is written by people and left as it is; the first run appends
the markers (with the section) at the end of the file.
"""

from __future__ import annotations

from pathlib import Path

BEGIN_MARKER = "<!-- ferrite-benchmark compare: begin (generated; edits inside are overwritten) -->"
END_MARKER = "<!-- ferrite-benchmark compare: end -->"


class MarkerError(ValueError):
    """The markers are unbalanced or out of order."""


def replace_between_markers(text: str, section: str) -> str:
    block = f"{BEGIN_MARKER}\n{section.strip()}\n{END_MARKER}"
    begin, end = text.find(BEGIN_MARKER), text.find(END_MARKER)
    if begin == -1 and end == -1:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    if begin == -1 or end == -1 or end < begin or text.count(BEGIN_MARKER) > 1:
        raise MarkerError("bench/RESULTS.md: the compare markers must appear once each, begin before end")
    return text[:begin] + block + text[end + len(END_MARKER):]


def replace_marked_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    path.write_text(replace_between_markers(text, section))

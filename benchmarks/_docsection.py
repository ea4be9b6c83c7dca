"""Write a measured section into a markdown document between two markers (benchmark scripts share this)."""

from __future__ import annotations

from pathlib import Path


def replace_section(path: Path, begin: str, end: str, text: str, title: str) -> None:
    """Put ``text`` (which starts with ``begin`` and ends with ``end``) in ``path``, replacing an older one."""
    doc = path.read_text() if path.is_file() else f"# {title}\n"
    if begin in doc:
        doc = doc[: doc.index(begin)] + text + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)

"""``.. readme-section:: TITLE``: one section of README.md, shown in the docs.

Some sections stay in the README (the front door) and belong in the docs too; this
directive reads the section under the Markdown heading ``TITLE`` at build time, so the
two never drift apart. It converts the little Markdown such a section uses: paragraphs,
``-`` lists, ```code```, ``**bold**``, ``*emphasis*`` and ``[text](url)`` links (a link
to a docs page's ``.rst`` file becomes a link to that page). Anything else is an error.
"""

from __future__ import annotations

import re
from pathlib import Path

from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.errors import ExtensionError

_HEADING = re.compile(r"^(#+)\s+(.*?)\s*$")
_CODE = re.compile(r"`([^`]+)`")
_LINK = re.compile(r"\[([^\]]+)\]\(([^)]+)\)")


def readme_section(readme: Path, title: str) -> list[str]:
    """The Markdown lines under the heading ``title``, up to the next heading of its
    level or above."""
    lines = readme.read_text(encoding="utf-8").splitlines()
    start = level = None
    for i, line in enumerate(lines):
        m = _HEADING.match(line)
        if not m:
            continue
        if start is None and m.group(2) == title:
            start, level = i + 1, len(m.group(1))
        elif start is not None and len(m.group(1)) <= level:
            return lines[start:i]
    if start is None:
        raise ExtensionError(f"README.md has no section {title!r}")
    return lines[start:]


def _inline(text: str) -> str:
    if "```" in text:
        raise ExtensionError("readme-section: fenced code blocks are not converted")
    parts = _CODE.split(text)  # odd parts are code
    out = []
    for j, part in enumerate(parts):
        if j % 2:
            out.append(f"``{part}``")
            continue

        def link(m: re.Match) -> str:
            label, target = m.group(1), m.group(2)
            if target.startswith("docs/") and target.endswith(".rst"):
                return f":doc:`{label} </{target[len('docs/') : -len('.rst')]}>`"
            return f"`{label} <{target}>`__"

        out.append(_LINK.sub(link, part))
    return "".join(out)


class ReadmeSection(Directive):
    required_arguments = 1
    final_argument_whitespace = True

    def run(self):
        env = self.state.document.settings.env
        readme = Path(env.srcdir).parent / "README.md"
        env.note_dependency(str(readme))
        rst = [_inline(line) for line in readme_section(readme, self.arguments[0])]
        box = nodes.container()
        self.state.nested_parse(StringList(rst, str(readme)), self.content_offset, box)
        return box.children


def setup(app):
    app.add_directive("readme-section", ReadmeSection)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

"""The documentation in the repository stays complete and self-contained.

A user with only a clone must be able to follow every link in README.md and docs/, and
the references must name every reason code, every relay setting and every reply the
code has: when the code gains one, the doc gains a row.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from urllib.parse import unquote

from relay.config import RelayConfig
from relay.reasons import EventKind, Reason

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s>]*)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
WEB = ("http://", "https://")


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (no links live there)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def links(path: Path) -> list[str]:
    text = prose(path.read_text(encoding="utf-8"))
    return INLINE_LINK.findall(text) + REFERENCE_DEFINITION.findall(text)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    slugs = set()
    for heading in HEADING.findall(text):
        plain = re.sub(r"[`*_]", "", heading).strip().lower()
        slugs.add(re.sub(r"[^\w\- ]", "", plain).replace(" ", "-"))
    return slugs


def link_problem(source: Path, target: str) -> str | None:
    """Why ``target`` (a link in ``source``) is not followable from a clone, or None."""
    if target.startswith(WEB):
        return None  # public pages (RFCs, standards) are fine
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
        return "not a web link and not a file in the repository"
    path_part, _, fragment = target.partition("#")
    if path_part.startswith("/"):
        return "an absolute path: use a path relative to the file"
    resolved = (source.parent / unquote(path_part)).resolve() if path_part else source
    if not resolved.is_relative_to(ROOT):
        return "points outside the repository"
    if not resolved.exists():
        return "does not exist in the repository"
    if fragment and resolved.suffix == ".md" and fragment.lower() not in anchors(resolved):
        return f"no heading makes the anchor #{fragment}"
    return None


def test_every_link_in_the_readme_and_docs_stays_inside_the_repository() -> None:
    problems = []
    checked = 0
    for path in markdown_files():
        for target in links(path):
            checked += 1
            problem = link_problem(path, target)
            if problem is not None:
                problems.append(f"{path.relative_to(ROOT)}: ({target}) {problem}")
    assert problems == []
    assert checked >= 10  # the parser really found the links


def test_no_doc_points_at_the_teams_shared_notes() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in markdown_files()
        if any(outside in path.read_text(encoding="utf-8") for outside in ("../shared", "/work/"))
    ]
    assert offenders == []


def test_the_link_checker_catches_links_out_of_the_repository(tmp_path: Path) -> None:
    readme = ROOT / "README.md"
    assert link_problem(readme, "../shared/PRODUCT.md") == "points outside the repository"
    assert link_problem(readme, "docs/nope.md") == "does not exist in the repository"
    assert link_problem(readme, "/etc/passwd") == "an absolute path: use a path relative to the file"
    assert link_problem(readme, "file:///etc/passwd") is not None
    assert link_problem(readme, "docs/configuration.md#no-such-heading") is not None
    assert link_problem(readme, "docs/configuration.md#runtime-controls") is None
    assert link_problem(readme, "https://www.rfc-editor.org/rfc/rfc5321") is None
    page = tmp_path / "page.md"
    page.write_text("See [a](one.md), ![b](img/two.png \"title\") and `[not](a-link.md)`.\n\n"
                    "```\n[not](either.md)\n```\n\n[ref]: three.md\n")
    assert links(page) == ["one.md", "img/two.png", "three.md"]


def test_the_readme_and_the_docs_index_link_every_doc() -> None:
    readme_links = set(links(ROOT / "README.md"))
    assert "docs/README.md" in readme_links
    index_links = {target.partition("#")[0] for target in links(DOCS / "README.md")}
    missing = [
        path.name for path in sorted(DOCS.glob("*.md")) if path.name != "README.md" and path.name not in index_links
    ]
    assert missing == []


def _documented_codes(path: Path) -> set[str]:
    return set(re.findall(r"`([a-z0-9-]+)`", path.read_text(encoding="utf-8")))


def test_every_reason_code_and_event_kind_is_documented() -> None:
    documented = _documented_codes(DOCS / "reasons.md")
    missing = sorted(str(code) for code in [*Reason, *EventKind] if str(code) not in documented)
    assert missing == [], "add these to docs/reasons.md"


def test_every_relay_setting_is_documented_with_its_environment_variable() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [
        field.name
        for field in dataclasses.fields(RelayConfig)
        if not re.search(rf"^\| `{field.name}` \|.*`SMTPPLUS_{field.name.upper()}`", text, re.M)
    ]
    assert missing == [], "add a row for these to docs/configuration.md"


ENHANCED_REPLY = re.compile(r"^([245]\d\d) ([245]\.\d{1,3}\.\d{1,3}) ?")


def relay_replies(path: Path) -> list[tuple[str, str, list[str]]]:
    """Every reply with an enhanced status code written in ``path``: (code, enhanced
    code, the fixed pieces of its text — what f-strings fill in is left out)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            pieces = [node.value]
        elif isinstance(node, ast.JoinedStr):
            text = "".join(str(v.value) if isinstance(v, ast.Constant) else "\0" for v in node.values)
            pieces = text.split("\0")
        else:
            continue
        match = ENHANCED_REPLY.match(pieces[0])
        if match is None:
            continue
        pieces[0] = pieces[0][match.end() :]
        found.append((match.group(1), match.group(2), [p.strip() for p in pieces if len(p.strip()) >= 3]))
    return found


def test_every_reply_the_relay_words_is_in_the_reply_table() -> None:
    rows = [line for line in (DOCS / "replies.md").read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    replies = relay_replies(ROOT / "relay" / "smtp.py") + relay_replies(ROOT / "relay" / "writer.py")
    assert len(replies) >= 30  # the parser really found them
    missing = [
        f"{code} {enhanced} {' … '.join(pieces)}"
        for code, enhanced, pieces in replies
        if not any(row.startswith(f"| {code} | {enhanced} |") and all(p in row for p in pieces) for row in rows)
    ]
    assert missing == [], "add these to docs/replies.md"

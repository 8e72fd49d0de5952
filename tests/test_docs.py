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

from relay import writer
from relay.config import RelayConfig
from relay.reasons import EventKind, Reason
from relay.replies import Replies, entries, fixed_pieces

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


def registry_replies() -> list[tuple[str, str, str, list[str]]]:
    """Every reply in the registry (relay.replies) with an enhanced status code: (name,
    code, enhanced code, the fixed pieces of its text — what a template fills in is
    left out)."""
    found = []
    for name, text in entries():
        match = ENHANCED_REPLY.match(text)
        if match is None:
            continue
        pieces = fixed_pieces(text[match.end() :])
        found.append((name, match.group(1), match.group(2), [p.strip() for p in pieces if len(p.strip()) >= 3]))
    return found


def test_every_reply_in_the_registry_is_in_the_reply_table() -> None:
    rows = [line for line in (DOCS / "replies.md").read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    replies = registry_replies()
    assert len(replies) >= 30  # the registry really is read
    missing = [
        f"{name}: {code} {enhanced} {' … '.join(pieces)}"
        for name, code, enhanced, pieces in replies
        if not any(row.startswith(f"| {code} | {enhanced} |") and all(p in row for p in pieces) for row in rows)
    ]
    assert missing == [], "add these to docs/replies.md"


def test_the_store_replies_are_the_registrys() -> None:
    # relay.writer words the store's replies itself (it sits below the session).
    assert writer.REPLY_NO_SPACE == Replies.STORE_FULL
    assert writer.REPLY_TEMPORARY == Replies.STORE_TEMPORARY


def test_the_session_words_no_reply_outside_the_registry() -> None:
    """A reply written inline in the session would escape the table: only the
    registry may hold reply text."""
    inline = []
    for module in ("smtp.py", "sasl.py", "rules.py"):
        for node in ast.walk(ast.parse((ROOT / "relay" / module).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.match(r"^[245]\d\d[ -]", node.value):
                inline.append(f"{module}: {node.value}")
            elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
                if re.match(r"^[245]\d\d[ -]", str(node.values[0].value)):
                    inline.append(f"{module}: {ast.unparse(node)}")
    assert inline == [], "move these to relay/replies.py"

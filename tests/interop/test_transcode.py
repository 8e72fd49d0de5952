"""relay.transcode: long-line folding and the RFC 6152 8-bit downgrade, checked with
the email package as the independent reader."""

from __future__ import annotations

import email
from email.message import Message
from email.policy import compat32
from email.policy import default as default_policy

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.transcode import (
    LINE_LIMIT,
    downgrade_8bit,
    encode_base64,
    encode_quoted_printable,
    fold_line,
    fold_long_lines,
    needs_smtputf8,
)

# Lines without CR/LF (the SMTP side stores CRLF-separated lines).
line_bytes = st.binary(max_size=3000).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
text_lines = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=1500
).map(lambda t: t.encode("utf-8"))


def leaves(message: Message) -> list[tuple[str, bytes]]:
    return [
        (part.get_content_type(), part.get_payload(decode=True) or b"")
        for part in message.walk()
        if not part.is_multipart()
    ]


@given(line_bytes, st.integers(min_value=8, max_value=1200))
def test_folding_a_line_keeps_every_octet_and_respects_the_limit(line: bytes, limit: int) -> None:
    pieces = fold_line(line, limit)
    assert all(len(p) <= limit for p in pieces)
    assert all(p.startswith(b" ") for p in pieces[1:])
    assert pieces[0] + b"".join(p[1:] for p in pieces[1:]) == line


@given(st.lists(text_lines, max_size=6))
def test_folding_never_splits_a_utf8_character(lines: list[bytes]) -> None:
    folded = fold_long_lines(b"\r\n".join(lines))
    for piece in folded.data.split(b"\r\n"):
        assert len(piece) <= LINE_LIMIT
        piece.decode("utf-8")  # raises if a sequence was cut
    assert folded.lines_folded == sum(1 for line in lines if len(line) > LINE_LIMIT)


@given(st.lists(st.text(alphabet="ab \t", max_size=3000).map(str.encode), min_size=1, max_size=4))
def test_a_header_line_folds_at_its_own_whitespace_and_unfolds_to_itself(words: list[bytes]) -> None:
    line = b"X-Long: " + b"".join(words)
    pieces = fold_long_lines(line + b"\r\n\r\nbody").data.split(b"\r\n\r\n")[0].split(b"\r\n")
    assert all(len(p) <= LINE_LIMIT for p in pieces)
    assert all(p[:1] in (b" ", b"\t") for p in pieces[1:])
    # Nothing but inserted spaces (only where no whitespace was near the limit) differs.
    assert b"".join(pieces).replace(b" ", b"") == line.replace(b" ", b"")
    if max((len(w) for w in line.replace(b"\t", b" ").split(b" ")), default=0) < LINE_LIMIT // 2:
        assert b"".join(pieces) == line  # whitespace everywhere: unfolding is exact


def test_a_message_with_short_lines_is_returned_unchanged() -> None:
    data = b"Subject: x\r\n\r\nshort\r\n"
    folded = fold_long_lines(data)
    assert folded.data is data and folded.lines_folded == 0


def test_a_long_header_becomes_a_continuation_line_and_unfolds_to_the_same_words() -> None:
    value = " ".join(f"word{i}" for i in range(300))
    data = f"Subject: {value}\r\nFrom: a@example.com\r\n\r\n{'x' * 2500}\r\n".encode()
    folded = fold_long_lines(data)
    assert folded.lines_folded == 2 and folded.longest == 2500
    parsed = email.message_from_bytes(folded.data, policy=compat32)
    assert str(parsed["Subject"]).replace("\r\n", "") == value  # folded at its own spaces
    body = parsed.get_payload()
    assert isinstance(body, str) and body.replace("\r\n ", "") == "x" * 2500 + "\r\n"


@given(st.binary(max_size=4000))
def test_quoted_printable_round_trips_any_bytes(body: bytes) -> None:
    encoded = encode_quoted_printable(body)
    assert encoded.isascii()
    assert all(len(line) <= 76 for line in encoded.split(b"\r\n"))
    message = email.message_from_bytes(
        b"Content-Type: text/plain\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + encoded
    )
    assert message.get_payload(decode=True) == body


@given(st.binary(max_size=4000))
def test_base64_round_trips_any_bytes(body: bytes) -> None:
    encoded = encode_base64(body)
    message = email.message_from_bytes(
        b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" + encoded
    )
    assert message.get_payload(decode=True) == body


texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=800).map(
    lambda t: t.replace("\r", "").replace("\n", "\r\n")
)


@settings(max_examples=150)
@given(texts, texts, st.binary(max_size=600), st.sampled_from(["", "8bit", "7bit"]))
def test_a_multipart_downgrade_reads_back_as_the_same_content(
    plain: str, html: str, attachment: bytes, cte: str
) -> None:
    encoding = f"Content-Transfer-Encoding: {cte}\r\n" if cte else ""
    data = (
        "From: a@example.com\r\nTo: b@example.net\r\nSubject: mixed\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n'
        "preamble\r\n--outer\r\n"
        'Content-Type: multipart/alternative; boundary="inner"\r\n\r\n'
        f"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n{encoding}\r\n{plain}\r\n"
        f"--inner\r\nContent-Type: text/html; charset=utf-8\r\n{encoding}\r\n{html}\r\n"
        "--inner--\r\n"
        "--outer\r\nContent-Type: application/octet-stream\r\n"
        f"{encoding}\r\n"
    ).encode() + attachment.replace(b"\r", b"").replace(b"\n", b"\r\n") + b"\r\n--outer--\r\nepilogue\r\n"
    result = downgrade_8bit(data)
    assert result.seven_bit and result.data.isascii()
    before = email.message_from_bytes(data, policy=default_policy)
    after = email.message_from_bytes(result.data, policy=default_policy)
    assert leaves(after) == leaves(before)
    for part_before, part_after in zip(before.walk(), after.walk(), strict=True):
        if part_before.get_content_maintype() == "text":
            assert part_after.get_content() == part_before.get_content()
    if data.isascii():
        assert result.data == data and result.parts == 0


def test_only_the_8bit_parts_change_and_text_becomes_quoted_printable() -> None:
    data = (
        b"From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain ascii\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        b"gr\xc3\xbc\xc3\x9fe\r\n"
        b"--b\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: binary\r\n\r\n\x89PNG\x00\xff\r\n"
        b"--b--\r\n"
    )
    result = downgrade_8bit(data)
    assert result.parts == 2 and result.seven_bit
    assert b"--b\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nplain ascii\r\n" in result.data
    assert b"Content-Transfer-Encoding: quoted-printable\r\n\r\ngr=C3=BC=C3=9Fe\r\n" in result.data
    assert b"Content-Transfer-Encoding: base64" in result.data
    assert b"8bit" not in result.data and b"binary" not in result.data
    parsed = email.message_from_bytes(result.data, policy=default_policy)
    assert [p.get_content() for p in parsed.iter_parts()][1] == "grüße"  # the CRLF before a delimiter belongs to it


def test_a_plain_message_without_mime_headers_gets_them_with_utf8() -> None:
    data = "From: a@example.com\r\nSubject: hi\r\n\r\nCafé crème\r\n".encode()
    result = downgrade_8bit(data)
    parsed = email.message_from_bytes(result.data, policy=default_policy)
    assert result.seven_bit and parsed["MIME-Version"] == "1.0"
    assert parsed.get_content() == "Café crème\r\n"


def test_an_attached_message_is_encoded_inside_not_as_a_whole() -> None:
    inner = "Subject: inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nÄrger\r\n"
    data = (
        "From: a@example.com\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n"
        f"--x\r\nContent-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n{inner}--x--\r\n"
    ).encode()
    result = downgrade_8bit(data)
    assert result.seven_bit
    parsed = email.message_from_bytes(result.data, policy=default_policy)
    attached = next(parsed.iter_parts())
    assert attached["Content-Transfer-Encoding"] == "7bit"
    body = attached.get_content()
    assert body.get_content() == "Ärger"


def test_8bit_header_text_cannot_be_downgraded_and_is_reported() -> None:
    data = "Subject: Grüße\r\n\r\nbody\r\n".encode()
    assert not downgrade_8bit(data).seven_bit
    assert needs_smtputf8("a@example.com", ["b@example.net"], data)
    assert needs_smtputf8("ä@example.com", ["b@example.net"], b"Subject: x\r\n\r\n")
    assert not needs_smtputf8("a@example.com", ["b@example.net"], "Subject: x\r\n\r\nGrüße\r\n".encode())


# Random MIME trees: multipart/mixed|alternative nesting, text and binary leaves with
# any CTE a client may declare for raw bytes, message/rfc822 wrappers.
leaf_bodies = st.one_of(
    texts.map(lambda t: ("text/plain; charset=utf-8", t.encode("utf-8"))),
    st.binary(max_size=300).map(
        lambda b: ("application/octet-stream", b.replace(b"\r", b"").replace(b"\n", b"\r\n"))
    ),
)


def _leaf(ctype_body: tuple[str, bytes], cte: str) -> bytes:
    ctype, body = ctype_body
    head = f"Content-Type: {ctype}\r\n" + (f"Content-Transfer-Encoding: {cte}\r\n" if cte else "")
    return head.encode() + b"\r\n" + body


@st.composite
def mime_entities(draw: st.DrawFn, depth: int = 0) -> bytes:
    kind = draw(st.sampled_from(["leaf", "leaf", "multipart", "message"] if depth < 3 else ["leaf"]))
    if kind == "leaf":
        return _leaf(draw(leaf_bodies), draw(st.sampled_from(["", "7bit", "8bit", "binary"])))
    if kind == "message":
        inner = draw(mime_entities(depth + 1))
        return b"Content-Type: message/rfc822\r\n\r\nSubject: inner\r\n" + inner
    boundary = f"b{depth}x{draw(st.integers(0, 999))}"
    parts = draw(st.lists(mime_entities(depth + 1), min_size=1, max_size=3))
    body = b"".join(f"--{boundary}\r\n".encode() + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    subtype = draw(st.sampled_from(["mixed", "alternative"]))
    return f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode() + body


@settings(max_examples=200, deadline=None)
@given(mime_entities())
def test_any_mime_tree_downgrades_to_7bit_with_every_leaf_decoding_the_same(entity: bytes) -> None:
    data = b"From: a@example.com\r\nMIME-Version: 1.0\r\n" + entity
    result = downgrade_8bit(data)
    assert result.data.isascii()
    assert max((len(line) for line in result.data.split(b"\r\n")), default=0) <= max(
        76, *(len(line) for line in data.split(b"\r\n") if line.isascii())
    )
    before = email.message_from_bytes(data, policy=compat32)
    after = email.message_from_bytes(result.data, policy=compat32)
    assert leaves(after) == leaves(before)
    assert downgrade_8bit(result.data).data == result.data  # nothing left to do the second time

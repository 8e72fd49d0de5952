"""The delivery engine's signer on a real store: which key signs, a rotation or removal
taking effect at the next read of the keys, and a stored key that cannot sign."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relay import dkim as rules
from relay.admin import dkim as keys
from relay.store import AsyncStore
from relay.store.dkim import active_keys

MESSAGE = b"From: Ann <ann@example.org>\r\nTo: bob@example.net\r\nSubject: hi\r\n\r\nhello\r\n"


def selector_of(data: bytes) -> str | None:
    if not data.startswith(b"DKIM-Signature:"):
        return None
    head = data.split(b"\r\nFrom:", 1)[0].decode()
    return rules.parse_tags(head.removeprefix("DKIM-Signature:"))["s"]


async def test_the_active_key_signs_and_changes_take_effect_at_the_next_read(db: Any, store_path: Path) -> None:
    first = keys.add(db, "example.org", selector="one", algorithm="ed25519")
    async with AsyncStore(store_path) as store:
        signer = rules.DkimSigner(lambda: store.run(active_keys), refresh=3600)
        signed = await signer.sign(MESSAGE)
        assert signed.signed and selector_of(signed.data) == first.selector
        assert [str(r) for r, _ in signed.notes] == ["dkim-signed"] and "d=example.org s=one (ed25519)" in signed.notes[0][1]

        other = await signer.sign(MESSAGE.replace(b"ann@example.org", b"ann@example.com"))
        assert not other.signed and other.data == MESSAGE.replace(b"ann@example.org", b"ann@example.com")
        assert other.notes == []

        keys.rotate(db, "example.org", selector="two")  # staged: "one" signs until it is activated
        signer.forget()
        assert selector_of((await signer.sign(MESSAGE)).data) == "one"
        keys.activate(db, "example.org", force=True)
        assert selector_of((await signer.sign(MESSAGE)).data) == "one"  # within its refresh time: as read
        signer.forget()
        assert selector_of((await signer.sign(MESSAGE)).data) == "two"

        keys.remove(db, "example.org", "two")
        signer.forget()
        unsigned = await signer.sign(MESSAGE)
        assert not unsigned.signed and unsigned.data == MESSAGE


async def test_a_stored_key_that_cannot_sign_sends_unsigned_and_says_why(db: Any, store_path: Path) -> None:
    keys.add(db, "example.org", selector="bad", algorithm="rsa-2048")
    db.execute("UPDATE dkim_keys SET private_key = ?", ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",))
    async with AsyncStore(store_path) as store:
        signer = rules.DkimSigner(lambda: store.run(active_keys))
        result = await signer.sign(MESSAGE)
    assert not result.signed and result.data == MESSAGE
    [(reason, detail)] = result.notes
    assert str(reason) == "dkim-sign-failed" and "bad of example.org is not a usable private key" in detail
    assert "AAAA" not in detail


async def test_a_message_without_a_final_line_end_is_signed_as_it_will_be_sent(db: Any, store_path: Path) -> None:
    keys.add(db, "example.org", selector="s", algorithm="ed25519")
    async with AsyncStore(store_path) as store:
        signer = rules.DkimSigner(lambda: store.run(active_keys))
        signed = await signer.sign(MESSAGE.rstrip(b"\r\n"))
    assert signed.signed and signed.data.endswith(b"hello\r\n")  # as the SMTP client would end it

"""Bulk-sender rules: a list's List-Unsubscribe settings, the one unsubscribe operation
(``smtpplus unsubscribe TOKEN`` and the one-click POST of the metrics listener both
call :func:`unsubscribe`), and the suppression list's operator entries.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay import policy
from relay.reasons import Reason
from relay.store import Connection, InvalidInput, NotFound, suppressions
from relay.store import subscriptions as store
from relay.store.directory import ListInfo, get_list
from relay.unsubscribe import (
    BadToken,
    UnsubscribeSettings,
    check_url_template,
    parse_token,
    token_matches,
)


def unsubscribe_settings(db: Connection, list_name: str) -> tuple[ListInfo, UnsubscribeSettings]:
    info = get_list(db, list_name)
    return info, store.list_settings(db, info.id)


def set_unsubscribe_settings(
    db: Connection,
    list_name: str,
    *,
    url_template: str | None = None,
    mailto: str | None = None,
    clear: bool = False,
) -> tuple[ListInfo, UnsubscribeSettings]:
    """Set (or with ``clear`` remove) the list's https URL template and/or mailto address;
    what is not given stays. InvalidInput names the fix."""
    info = get_list(db, list_name)
    current = store.list_settings(db, info.id)
    if clear:
        if url_template is not None or mailto is not None:
            raise InvalidInput("--clear removes both — give it alone, then set what you want")
        new = UnsubscribeSettings()
    else:
        url = current.url_template
        if url_template is not None:
            try:
                url = check_url_template(url_template) if url_template.strip() else None
            except ValueError as exc:
                raise InvalidInput(str(exc)) from None
        address = current.mailto
        if mailto is not None:
            address = _mailto_address(mailto) if mailto.strip() else None
        new = UnsubscribeSettings(url, address)
    store.set_list_settings(db, info.id, new)
    return info, new


def _mailto_address(value: str) -> str:
    text = value.strip().removeprefix("mailto:")
    try:
        address = policy.normalize_address(text)
    except policy.PolicyError as exc:
        raise InvalidInput(f"--mailto: {exc}") from None
    if not address.isascii() or any(c in address for c in "?&<>,"):
        raise InvalidInput(f"--mailto {text!r}: give a plain ASCII address, e.g. unsubscribe@example.org")
    return address


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    list_name: str
    address: str
    already: bool  # it was unsubscribed before (the token was used again)
    removed: int  # unsent campaign messages to the member that were removed


def unsubscribe(db: Connection, token: str, *, via: str = "smtpplus unsubscribe") -> Unsubscribed:
    """Mark the member a List-Unsubscribe token names as unsubscribed from its list
    (again: no change). A malformed, unknown or forged token is an InvalidInput whose
    text starts with the reason code, the same for every such token."""
    refusal = InvalidInput(
        f"{Reason.UNSUBSCRIBE_BAD_TOKEN}: not a valid unsubscribe token — copy it whole from the "
        "message's List-Unsubscribe header (NUMBER.CODE)"
    )
    try:
        subscription_id, mac = parse_token(token)
    except BadToken:
        raise refusal from None
    try:
        info = store.get_subscription(db, subscription_id)
    except NotFound:
        raise refusal from None
    if not token_matches(store.token_secret(db), mac, info.list_id, info.address):
        raise refusal
    changed, removed = store.mark_unsubscribed(db, info, via=via)
    return Unsubscribed(info.list_name, info.address, not changed, removed)


def add_suppression(db: Connection, address: str, *, detail: str = "") -> tuple[suppressions.Suppression, int]:
    """An operator suppresses ``address``: campaigns skip it, its unsent campaign mail goes."""
    check = policy.check_address(address.strip())
    if check.problem is not None or check.address is None:
        raise InvalidInput(
            f"{address.strip()!r} is not an address ({policy.describe_address_problem(check.problem)}) — give one like user@example.org"
        )
    return suppressions.add_suppression(db, check.address, detail=detail.strip())


def remove_suppression(db: Connection, address: str) -> suppressions.Suppression:
    return suppressions.remove_suppression(db, suppressions.canonical(address))

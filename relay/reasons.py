"""The one enumeration of event kinds and reason codes.

The relay records them, the console filters on them, the CLI prints them and the
harness asserts on them. Add members here; never spell a reason as a bare string.
"""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    AUTH = "auth"
    REFUSED = "refused"
    QUEUED = "queued"
    DELIVERY = "delivery"
    DEFERRED = "deferred"
    SENT = "sent"
    FAILED = "failed"
    BOUNCE = "bounce"
    CAMPAIGN = "campaign"
    OPERATOR = "operator"
    RELAY = "relay"
    VERIFICATION = "verification"


class Reason(enum.StrEnum):
    # AUTH
    AUTH_OK = "auth-ok"
    AUTH_BAD_CREDENTIALS = "auth-bad-credentials"
    AUTH_UNKNOWN_USER = "auth-unknown-user"
    AUTH_INACTIVE_USER = "auth-inactive-user"
    AUTH_AUTHZID_MISMATCH = "auth-authzid-mismatch"
    AUTH_NEEDS_TLS = "auth-needs-tls"
    AUTH_TOO_MANY_FAILURES = "auth-too-many-failures"
    AUTH_MALFORMED = "auth-malformed"
    # Refusals during the session
    MAIL_BEFORE_AUTH = "mail-before-auth"
    SENDER_EMPTY = "sender-empty"  # no longer given (MAIL FROM:<> is accepted after AUTH); older events carry it
    SENDER_INVALID = "sender-invalid"
    SENDER_NOT_AUTHORIZED = "sender-not-authorized"
    SENDER_UNVERIFIED = "sender-unverified"
    RECIPIENT_INVALID = "recipient-invalid"
    TOO_MANY_RECIPIENTS = "too-many-recipients"
    MESSAGE_TOO_LARGE = "message-too-large"
    LINE_TOO_LONG = "line-too-long"  # no longer given (lines over 998 octets are taken and folded on delivery); older events carry it
    HEADER_FROM_MISSING = "header-from-missing"
    HEADER_FROM_MULTIPLE = "header-from-multiple"
    HEADER_FROM_INVALID = "header-from-invalid"
    HEADER_FROM_NOT_AUTHORIZED = "header-from-not-authorized"
    HEADER_FROM_UNVERIFIED = "header-from-unverified"
    HEADER_SENDER_MULTIPLE = "header-sender-multiple"
    HEADER_SENDER_INVALID = "header-sender-invalid"
    HEADER_SENDER_NOT_AUTHORIZED = "header-sender-not-authorized"
    HEADER_SENDER_UNVERIFIED = "header-sender-unverified"
    HEADER_FROM_LOOKALIKE = "header-from-lookalike"  # display name spells another address
    HEADER_SENDER_LOOKALIKE = "header-sender-lookalike"
    HEADER_TOO_LARGE = "header-too-large"  # header section over header_size_limit
    TOO_MANY_HOPS = "too-many-hops"  # Received: headers at hopcount_limit (a mail loop)
    MESSAGE_NUL = "message-nul"  # NUL in message data (Postfix's message_reject_characters)
    TOO_MANY_ERRORS = "too-many-errors"  # hard error limit: 421 4.7.0 and close
    PRE_AUTH_REFUSALS = "pre-auth-refusals"  # one per connection: refusals before AUTH, counted
    SERVER_BUSY = "server-busy"  # in-flight message bytes over the budget: 452 4.3.1
    TLS_INSIDE_TLS = "starttls-inside-tls"
    CONNECTION_LIMIT = "connection-limit"
    SESSION_TIMEOUT = "session-timeout"  # idle too long, or no mail queued for too long
    STORE_UNAVAILABLE = "store-unavailable"
    STORE_FULL = "store-full"
    INTERNAL_ERROR = "internal-error"
    # Queue and delivery
    ACCEPTED = "accepted"
    DELIVERY_ATTEMPT = "delivery-attempt"
    DELIVERED = "delivered"
    DEFERRED_4XX = "deferred-4xx"
    DEFERRED_CONNECT = "deferred-connect"
    DEFERRED_TIMEOUT = "deferred-timeout"
    FAILED_5XX = "failed-5xx"
    FAILED_LIFETIME = "failed-lifetime"
    NO_NEXT_HOP = "no-next-hop"
    LEASE_RECLAIMED = "lease-reclaimed"
    BOUNCE_QUEUED = "bounce-queued"
    DEFERRED_TLS = "deferred-tls"  # STARTTLS required but not offered or failed
    DEFERRED_AUTH = "deferred-auth"  # the next hop refused our AUTH
    NEXT_HOP_SELF = "next-hop-self"  # the next hop is this relay's own listening address
    NEXT_HOP_DOWN = "next-hop-down"  # backing off for the whole next hop
    NEXT_HOP_UP = "next-hop-up"
    # Destinations (MX delivery, routes): relay/delivery/
    ROUTE_CHANGED = "route-changed"  # an operator added or removed a route (transport map)
    MX_HOST_FAILED = "mx-host-failed"  # one MX host failed (connect, TLS, 4xx to all): the next one is tried
    DESTINATION_DOWN = "destination-down"  # every host of a destination failed: it backs off, others go on
    DESTINATION_UP = "destination-up"
    DEFERRED_DESTINATION = "deferred-destination"  # not tried: the destination is backing off
    MX_NEEDS_SERVER_NAME = "mx-needs-server-name"  # MX delivery refused to start: server_name has no dot
    PRUNED = "pruned"  # retention removed finished messages and old events
    LINES_FOLDED = "lines-folded"  # lines over 998 octets folded on delivery (RFC 5321 §4.5.3.1.6)
    DOWNGRADED_8BIT = "downgraded-8bit"  # 8-bit MIME parts re-encoded for a hop without 8BITMIME
    FAILED_NO_SMTPUTF8 = "failed-no-smtputf8"  # the message needs SMTPUTF8, the next hop lacks it (5.6.7)
    FAILED_SIZE_LIMIT = "failed-size-limit"  # the message is over the next hop's advertised SIZE (5.3.4)
    RECIPIENTS_SPLIT = "recipients-split"  # more transactions: recipients_per_transaction or the hop's 452
    DSN_RELAYED = "dsn-relayed"  # NOTIFY=SUCCESS, next hop without DSN: a "relayed" report to the sender
    BOUNCE_SUPPRESSED = "bounce-suppressed"  # NOTIFY=NEVER (or no FAILURE), or a null reverse path
    # MX routing (relay/mx.py)
    FAILED_NULL_MX = "failed-null-mx"  # the domain publishes a null MX (RFC 7505): 5.1.10
    FAILED_NO_DOMAIN = "failed-no-domain"  # NXDOMAIN, or not a name DNS can look up: 5.1.2
    FAILED_NO_MAIL_HOST = "failed-no-mail-host"  # no MX and no A/AAAA (5.1.2), or no MX host has an address (5.4.4)
    DEFERRED_DNS = "deferred-dns"  # DNS timeout, SERVFAIL, REFUSED: 4.4.3, retried
    FAILED_MX_LOOP = "failed-mx-loop"  # the domain's MX hosts (from the best down to this relay) are this relay: 5.4.6
    ROUTE_SELF = "route-self"  # a route (transport map) points at this relay's own listener: 4.4.6, mail waits
    DKIM_SIGNED = "dkim-signed"  # signed with the From: domain's active DKIM key (relay/dkim.py)
    DKIM_SIGN_FAILED = "dkim-sign-failed"  # a key applied but signing failed: sent unsigned
    # Campaigns
    CAMPAIGN_CREATED = "campaign-created"
    CAMPAIGN_STARTED = "campaign-started"
    CAMPAIGN_PAUSED_PRIORITY = "campaign-paused-priority"
    CAMPAIGN_RESUMED = "campaign-resumed"
    CAMPAIGN_PAUSED = "campaign-paused"
    CAMPAIGN_CANCELLED = "campaign-cancelled"
    CAMPAIGN_DONE = "campaign-done"
    # Bulk-sender rules: unsubscribes and the suppression list
    MEMBER_UNSUBSCRIBED = "member-unsubscribed"  # a List-Unsubscribe token was used (CLI, one-click POST)
    CAMPAIGN_SKIPPED_UNSUBSCRIBED = "campaign-skipped-unsubscribed"  # no message made for that member
    CAMPAIGN_SKIPPED_SUPPRESSED = "campaign-skipped-suppressed"
    UNSUBSCRIBE_BAD_TOKEN = "unsubscribe-bad-token"  # refused (CLI error, HTTP 400); no event is written
    SUPPRESSION_ADDED = "suppression-added"
    SUPPRESSION_REMOVED = "suppression-removed"
    RECIPIENT_SUPPRESSED = "recipient-suppressed"  # the next hop answered 5.1.x: campaigns skip it from now on
    # Operators
    MESSAGE_HELD = "message-held"
    MESSAGE_RELEASED = "message-released"
    MESSAGE_RETRY = "message-retry"
    MESSAGE_DELETED = "message-deleted"
    DELIVERY_PAUSED = "delivery-paused"
    DELIVERY_RESUMED = "delivery-resumed"
    SETTING_CHANGED = "setting-changed"
    DKIM_KEY_ADDED = "dkim-key-added"  # `smtpplus dkim add`: a domain's first signing key
    DKIM_KEY_STAGED = "dkim-key-staged"  # `dkim rotate`: a new key waits for its record; the old one signs on
    DKIM_KEY_ROTATED = "dkim-key-rotated"  # `dkim activate` (or `rotate --now`): a new active key, the old one retired
    DKIM_KEY_REMOVED = "dkim-key-removed"  # `dkim rm`
    # Relay lifecycle
    RELAY_STARTED = "relay-started"
    RELAY_STOPPED = "relay-stopped"
    RELAY_TAKEOVER = "relay-takeover"
    PORT_NOT_SERVED = "port-not-served"
    SERVER_NAME_UNDOTTED = "server-name-undotted"  # warning at start, with the fix
    TLS_REGENERATED = "tls-regenerated"  # the generated pair was replaced (serverAuth, lifetime, expiry)
    TLS_RELOADED = "tls-reloaded"  # the configured certificate/key changed and were loaded
    TLS_RELOAD_FAILED = "tls-reload-failed"  # the new pair is bad: the old one is kept
    CONFIG_RELOADED = "config-reloaded"  # SIGHUP: the configuration file read again and applied
    CONFIG_RELOAD_FAILED = "config-reload-failed"  # the new configuration is invalid: the old one is kept
    # Sender verification
    IDENTITY_VERIFIED = "identity-verified"
    CODE_SENT = "code-sent"
    CODE_REJECTED = "code-rejected"
    DNS_CHECK_FAILED = "dns-check-failed"


# What went wrong: refusals, failed AUTH, deferrals and failures, and faults an operator
# should look at (a port not served, a failed TLS reload, a rejected code). Consoles
# highlight these. Every reason documented in docs/reasons.md under kind `refused`,
# `deferred` or `failed` (and every AUTH reason but `auth-ok`) must be here:
# tests/console/test_events_help_live.py checks that against the docs.
PROBLEMS: frozenset[Reason] = frozenset({
    Reason.AUTH_BAD_CREDENTIALS, Reason.AUTH_UNKNOWN_USER, Reason.AUTH_INACTIVE_USER,
    Reason.AUTH_AUTHZID_MISMATCH, Reason.AUTH_NEEDS_TLS, Reason.AUTH_TOO_MANY_FAILURES,
    Reason.AUTH_MALFORMED,
    Reason.MAIL_BEFORE_AUTH, Reason.SENDER_EMPTY, Reason.SENDER_INVALID, Reason.SENDER_NOT_AUTHORIZED,
    Reason.SENDER_UNVERIFIED, Reason.RECIPIENT_INVALID, Reason.TOO_MANY_RECIPIENTS,
    Reason.MESSAGE_TOO_LARGE, Reason.LINE_TOO_LONG,
    Reason.HEADER_FROM_MISSING, Reason.HEADER_FROM_MULTIPLE, Reason.HEADER_FROM_INVALID,
    Reason.HEADER_FROM_NOT_AUTHORIZED, Reason.HEADER_FROM_UNVERIFIED, Reason.HEADER_SENDER_MULTIPLE,
    Reason.HEADER_SENDER_INVALID, Reason.HEADER_SENDER_NOT_AUTHORIZED, Reason.HEADER_SENDER_UNVERIFIED,
    Reason.HEADER_FROM_LOOKALIKE, Reason.HEADER_SENDER_LOOKALIKE, Reason.HEADER_TOO_LARGE, Reason.TOO_MANY_HOPS,
    Reason.MESSAGE_NUL, Reason.TOO_MANY_ERRORS, Reason.PRE_AUTH_REFUSALS, Reason.SERVER_BUSY,
    Reason.TLS_INSIDE_TLS, Reason.CONNECTION_LIMIT, Reason.SESSION_TIMEOUT,
    Reason.STORE_UNAVAILABLE, Reason.STORE_FULL, Reason.INTERNAL_ERROR,
    Reason.DEFERRED_4XX, Reason.DEFERRED_CONNECT, Reason.DEFERRED_TIMEOUT, Reason.DEFERRED_TLS,
    Reason.DEFERRED_AUTH, Reason.FAILED_5XX, Reason.FAILED_LIFETIME, Reason.FAILED_NO_SMTPUTF8, Reason.FAILED_SIZE_LIMIT,
    Reason.FAILED_NULL_MX, Reason.FAILED_NO_DOMAIN, Reason.FAILED_NO_MAIL_HOST, Reason.DEFERRED_DNS,
    Reason.FAILED_MX_LOOP, Reason.ROUTE_SELF,
    Reason.NO_NEXT_HOP, Reason.NEXT_HOP_SELF, Reason.NEXT_HOP_DOWN,
    Reason.RELAY_TAKEOVER, Reason.PORT_NOT_SERVED, Reason.SERVER_NAME_UNDOTTED, Reason.TLS_RELOAD_FAILED,
    Reason.CONFIG_RELOAD_FAILED,
    Reason.MX_HOST_FAILED, Reason.DESTINATION_DOWN, Reason.DEFERRED_DESTINATION, Reason.MX_NEEDS_SERVER_NAME,
    Reason.CODE_REJECTED, Reason.DNS_CHECK_FAILED,
    Reason.DKIM_SIGN_FAILED,
})

"""The pure rules of relay.policy: `;` lists, domains, addresses, who may send as whom."""

from __future__ import annotations

import idna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay import policy
from relay.policy import AddressProblem, PolicyError, check_address
from relay.reasons import Reason
from relay.smtp import authorization
from relay.store.directory import AuthRecord

# ---------------------------------------------------------------------------
# Strategies

_label = st.from_regex(r"\A[a-z0-9](?:[a-z0-9-]{0,12}[a-z0-9])?\Z").filter(lambda s: s[2:4] != "--")
_tld = st.from_regex(r"\A[a-z]{2,6}\Z")
ascii_domains = st.builds(lambda labels, tld: ".".join([*labels, tld]), st.lists(_label, min_size=1, max_size=3), _tld)
# Latin letters with diacritics: every combination is a valid IDNA 2008 label, and
# each upper-cases to one character (no ß → SS), so case folding is well defined.
_unicode_label = st.text(alphabet="abcdefghijklmnopqrstuvwxyzäöüéèêñçåøłžšđ", min_size=1, max_size=12)
unicode_domains = st.builds(
    lambda labels, tld: ".".join([*labels, tld]), st.lists(_unicode_label, min_size=1, max_size=3), _tld
)
_local = st.from_regex(r"\A[a-z0-9](?:[a-z0-9._+-]{0,20}[a-z0-9])?\Z").filter(lambda s: ".." not in s)
# Entry text for the `;` parser: anything but commas and semicolons, spaces included.
_entry = st.text(alphabet=st.characters(blacklist_characters=",;", blacklist_categories=["Cs"]), max_size=12)


def _random_case(text: str, flips: list[bool]) -> str:
    return "".join(ch.upper() if flip else ch for ch, flip in zip(text, flips + [False] * len(text), strict=False))


# ---------------------------------------------------------------------------
# `;` lists


@given(st.lists(_entry, max_size=8), st.lists(st.sampled_from([";", " ;", "; ", " ; ", ";;"]), max_size=8))
def test_semicolon_list_trims_drops_empty_and_dedupes(entries: list[str], separators: list[str]) -> None:
    text = "".join(e + (separators[i] if i < len(separators) else ";") for i, e in enumerate(entries))
    parsed = policy.split_semicolon_list(text)
    expected = list(dict.fromkeys(e.strip() for e in text.split(";") if e.strip()))
    assert parsed == expected
    assert len(parsed) == len(set(parsed))
    assert all(p == p.strip() and p for p in parsed)


@given(st.lists(_entry, max_size=8))
def test_semicolon_list_is_idempotent(entries: list[str]) -> None:
    once = policy.split_semicolon_list(";".join(entries))
    assert policy.split_semicolon_list(";".join(once)) == once
    assert policy.split_semicolon_list(" ; ".join(once)) == once


@given(st.text(max_size=20), st.text(max_size=20))
def test_a_comma_is_always_an_error_that_says_use_semicolons(before: str, after: str) -> None:
    with pytest.raises(PolicyError, match="use semicolons"):
        policy.split_semicolon_list(before + "," + after)


def test_comma_error_names_the_bad_entry() -> None:
    with pytest.raises(PolicyError) as err:
        policy.parse_domains("good.com; a.com,b.com ;other.com")
    assert "'a.com,b.com'" in str(err.value)
    with pytest.raises(PolicyError, match="semicolons"):
        policy.parse_senders("x@a.com, y@b.com")


def test_empty_or_blank_lists_are_empty() -> None:
    assert policy.parse_domains("") == []
    assert policy.parse_domains(" ; ;; ") == []
    assert policy.parse_senders("  ") == []


# ---------------------------------------------------------------------------
# Domains


@given(ascii_domains, st.lists(st.booleans(), max_size=60), st.booleans(), st.sampled_from(["", " ", "\t", "  "]))
def test_domain_normalization_lowercases_and_is_idempotent(domain: str, flips: list[bool], dot: bool, pad: str) -> None:
    typed = pad + _random_case(domain, flips) + ("." if dot else "") + pad
    canonical = policy.normalize_domain(typed)
    assert canonical == domain
    assert policy.normalize_domain(canonical) == canonical


@given(unicode_domains)
def test_idna_round_trip(domain: str) -> None:
    canonical = policy.normalize_domain(domain)
    assert canonical.isascii() and canonical == canonical.lower()
    assert idna.decode(canonical) == domain
    assert policy.normalize_domain(idna.decode(canonical)) == canonical
    assert policy.normalize_domain(domain.upper()) == canonical
    assert policy.normalize_domain(canonical.upper()) == canonical


@given(st.lists(st.one_of(ascii_domains, unicode_domains), min_size=1, max_size=6), st.lists(st.booleans(), max_size=40))
def test_parse_domains_dedupes_case_insensitively_and_is_idempotent(domains: list[str], flips: list[bool]) -> None:
    typed = domains + [_random_case(d, flips).upper() for d in domains]
    parsed = policy.parse_domains(";".join(typed))
    assert parsed == list(dict.fromkeys(policy.normalize_domain(d) for d in domains))
    assert policy.parse_domains(";".join(parsed)) == parsed


def test_known_idna_forms() -> None:
    assert policy.normalize_domain("Bücher.DE.") == "xn--bcher-kva.de"
    assert policy.normalize_domain("xn--bcher-kva.de") == "xn--bcher-kva.de"
    assert policy.parse_domains("bücher.de;XN--BCHER-KVA.DE; Bücher.de") == ["xn--bcher-kva.de"]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        (".", "empty"),
        ("localhost", "two labels"),
        ("exa mple.com", "spaces"),
        ("exa\tmple.com", "spaces or control"),
        ("info@example.com", "senders list"),
        ("1.2.3.4", "IP addresses"),
        ("[1.2.3.4]", "literals"),
        ("::1", "IP addresses"),
        ("a_b.com", "not a valid domain"),
        ("-a.com", "not a valid domain"),
        ("a-.com", "not a valid domain"),
        ("ab--cd.com", "not a valid domain"),
        ("a..com", "not a valid domain"),
        ("a" * 64 + ".com", "not a valid domain"),
        (".".join(["a" * 63] * 4) + ".com", "not a valid domain"),
    ],
)
def test_bad_domains_are_refused_naming_the_entry(value: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy.normalize_domain(value)
    assert fragment in str(err.value)
    assert repr(value) in str(err.value)


def test_parse_domains_error_names_the_bad_entry() -> None:
    with pytest.raises(PolicyError, match="'bad_domain.com'"):
        policy.parse_domains("good.com;bad_domain.com")


def test_longest_valid_label_and_domain() -> None:
    assert policy.normalize_domain("a" * 63 + ".com") == "a" * 63 + ".com"
    domain = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, the DNS limit
    assert policy.normalize_domain(domain) == domain


# ---------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("", AddressProblem.EMPTY),
        ("<>", AddressProblem.EMPTY),
        ("   ", AddressProblem.EMPTY),
        ("a%b@example.com", AddressProblem.PERCENT),
        ("user%other.net@example.com", AddressProblem.PERCENT),
        ("user@example.com%other.net", AddressProblem.PERCENT),
        ("host!user@example.com", AddressProblem.BANG),
        ('"a@b"@example.com', AddressProblem.QUOTED_AT),
        ('"victim@visitor.net"@example.com', AddressProblem.QUOTED_AT),
        ('"a%b"@example.com', AddressProblem.PERCENT),
        ('"a!b"@example.com', AddressProblem.BANG),
        ("@relay.net:user@example.com", AddressProblem.SOURCE_ROUTE),
        ("@a.net,@b.net:user@example.com", AddressProblem.SOURCE_ROUTE),
        ("<@relay.net:user@example.com>", AddressProblem.SOURCE_ROUTE),
        ("user@[1.2.3.4]", AddressProblem.LITERAL),
        ("user@[IPv6:::1]", AddressProblem.LITERAL),
        ("user@1.2.3.4", AddressProblem.LITERAL),
        ("user", AddressProblem.NO_DOMAIN),
        ("user@", AddressProblem.NO_DOMAIN),
        ('"user"', AddressProblem.NO_DOMAIN),
        ("a" * 65 + "@example.com", AddressProblem.LOCAL_TOO_LONG),
        ("x@" + ".".join(["a" * 63] * 5), AddressProblem.DOMAIN_TOO_LONG),
        ("a\r\nb@example.com", AddressProblem.CONTROL),
        ("a\x00@example.com", AddressProblem.CONTROL),
        ("a@exam\x7fple.com", AddressProblem.CONTROL),
        ("a\tb@example.com", AddressProblem.CONTROL),
        ("@example.com", AddressProblem.SYNTAX),
        ("a b@example.com", AddressProblem.SYNTAX),
        ("a..b@example.com", AddressProblem.SYNTAX),
        (".a@example.com", AddressProblem.SYNTAX),
        ("a.@example.com", AddressProblem.SYNTAX),
        ("a@b@example.com", AddressProblem.SYNTAX),
        ('"unterminated@example.com', AddressProblem.SYNTAX),
        ("user@exa mple.com", AddressProblem.SYNTAX),
        ("user@localhost", AddressProblem.SYNTAX),
        ("üser@example.com", AddressProblem.SYNTAX),
    ],
)
def test_address_problems(raw: str, problem: AddressProblem) -> None:
    assert check_address(raw) == policy.AddressCheck(None, problem)
    with pytest.raises(PolicyError) as err:
        policy.normalize_address(raw)
    assert policy.describe_address_problem(problem) in str(err.value)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("info@example.com", "info@example.com"),
        ("<Info@Example.COM>", "info@example.com"),
        ("  john.smith+news@Example.com  ", "john.smith+news@example.com"),
        ("user@bücher.de", "user@xn--bcher-kva.de"),
        ("user@example.com.", "user@example.com"),
        ('"john doe"@example.com', '"john doe"@example.com'),
        ("a" * 64 + "@example.com", "a" * 64 + "@example.com"),
        ("o'brien@example.com", "o'brien@example.com"),
    ],
)
def test_valid_addresses_are_canonical(raw: str, canonical: str) -> None:
    assert check_address(raw) == policy.AddressCheck(canonical)
    assert policy.normalize_address(raw) == canonical
    assert policy.normalize_address(canonical) == canonical


@given(ascii_domains, st.sampled_from(["a%b@{d}", "a!b@{d}", '"a@b"@{d}', "@relay.{d}:a@{d}", "a@[{d}]"]))
def test_tricks_are_refused_whatever_the_domain(domain: str, template: str) -> None:
    result = check_address(template.format(d=domain))
    assert result.address is None
    assert result.problem in {
        AddressProblem.PERCENT,
        AddressProblem.BANG,
        AddressProblem.QUOTED_AT,
        AddressProblem.SOURCE_ROUTE,
        AddressProblem.LITERAL,
    }


@given(_local, st.one_of(ascii_domains, unicode_domains), st.lists(st.booleans(), max_size=60))
def test_address_normalization_is_case_insensitive_and_idempotent(local: str, domain: str, flips: list[bool]) -> None:
    canonical = policy.normalize_address(f"{local}@{domain}")
    assert canonical == f"{local}@{policy.normalize_domain(domain)}"
    assert policy.normalize_address(_random_case(f"{local}@{domain}", flips)) == canonical
    assert policy.normalize_address(canonical) == canonical


def test_parse_senders_dedupes_and_names_the_bad_entry() -> None:
    assert policy.parse_senders("Info@Example.com; info@example.com ;sales@example.com") == [
        "info@example.com",
        "sales@example.com",
    ]
    with pytest.raises(PolicyError) as err:
        policy.parse_senders("ok@example.com;visitor%evil.net@example.com")
    assert "'visitor%evil.net@example.com'" in str(err.value)


# ---------------------------------------------------------------------------
# Who may send as whom


# The one authorization rule is relay.smtp.authorization (the SMTP path and
# campaigns); policy.authorizing_identity, which ignored verification, is gone.


def _user(senders: dict[str, str] | None = None, domains: dict[str, str] | None = None) -> AuthRecord:
    return AuthRecord(1, "u", "hash", True, 1, 3, 1, "L", dict(senders or {}), dict(domains or {}))


def _may_send(address: str, user: AuthRecord) -> bool:
    return authorization(address, user, "MAIL FROM") is None


def test_exact_address_is_authorized_and_others_at_its_domain_are_not() -> None:
    assert _may_send("info@example.com", _user({"info@example.com": "verified"}))
    assert _may_send("info@example.com", _user({"info@example.com": "verified"}, {"example.com": "pending"}))
    refused = authorization("sales@example.com", _user({"info@example.com": "verified"}), "MAIL FROM")
    assert refused is not None and refused[1] is Reason.SENDER_NOT_AUTHORIZED


def test_exact_domain_covers_every_address_at_it() -> None:
    user = _user(domains={"example.com": "verified"})
    assert _may_send("anyone@example.com", user)
    assert not _may_send("anyone@other.com", user)
    assert not _may_send("anyone@notexample.com", user)


def test_second_level_does_not_cover_third_level_nor_the_reverse() -> None:
    assert not _may_send("a@marketing.example.com", _user(domains={"example.com": "verified"}))
    assert not _may_send("a@example.com", _user(domains={"marketing.example.com": "verified"}))
    both = _user(domains={"example.com": "verified", "marketing.example.com": "verified"})
    assert _may_send("a@marketing.example.com", both) and _may_send("a@example.com", both)


def test_authorization_is_case_insensitive() -> None:
    assert _may_send("INFO@EXAMPLE.COM", _user({"info@example.com": "verified"}))
    assert _may_send("a@Example.COM", _user(domains={"example.com": "verified"}))


def test_an_unverified_identity_does_not_authorize_and_says_so() -> None:
    refused = authorization("info@example.com", _user({"info@example.com": "pending"}), "MAIL FROM")
    assert refused is not None and refused[1] is Reason.SENDER_UNVERIFIED
    assert "awaits verification" in refused[0]
    # Either identity verified is enough when both the address and its domain are listed.
    assert _may_send("info@example.com", _user({"info@example.com": "pending"}, {"example.com": "verified"}))


@given(ascii_domains, _label, _local)
def test_a_domain_never_covers_its_subdomains(domain: str, sub: str, local: str) -> None:
    user = _user(domains={domain: "verified"})
    assert not _may_send(f"{local}@{sub}.{domain}", user)
    assert _may_send(f"{local}@{domain}", user)


def test_a_visitors_address_from_a_web_form_is_not_authorized() -> None:
    user = _user({"info@shop.example": "verified"}, {"shop.example": "verified"})
    assert not _may_send("visitor@gmail.com", user)


def test_the_dead_second_authorization_rule_is_gone() -> None:
    assert not hasattr(policy, "authorizing_identity")


# ---------------------------------------------------------------------------
# Other operator input


def test_note_length_limit_and_control_characters() -> None:
    assert policy.validate_note("  internal: CRM sync  ") == "internal: CRM sync"
    assert policy.validate_note("x" * policy.MAX_NOTE) == "x" * policy.MAX_NOTE
    assert policy.validate_note("line one\nline two") == "line one\nline two"
    with pytest.raises(PolicyError, match=f"{policy.MAX_NOTE} or fewer"):
        policy.validate_note("x" * (policy.MAX_NOTE + 1))
    with pytest.raises(PolicyError, match="control"):
        policy.validate_note("bell\x07")


@pytest.mark.parametrize("name", ["alice", "newsletter-1", "A.b_c-9", "9lives", "x" * policy.MAX_USERNAME])
def test_valid_usernames(name: str) -> None:
    assert policy.validate_username(f" {name} ") == name


@pytest.mark.parametrize("name", ["", " ", "-lead", ".dot", "has space", "a@b", "semi;colon", "ünï", "x" * (policy.MAX_USERNAME + 1)])
def test_invalid_usernames(name: str) -> None:
    with pytest.raises(PolicyError, match="letters, digits"):
        policy.validate_username(name)


def test_generated_usernames_use_the_list_slug_and_the_smallest_free_number() -> None:
    assert policy.list_slug("Newsletter EU") == "newsletter-eu"
    assert policy.list_slug("  --Ünï  Côde!! ") == "n-c-de"
    assert policy.list_slug("!!!") == "list"
    assert len(policy.list_slug("x" * 100)) == 40
    assert policy.generated_username("Newsletter EU", []) == "newsletter-eu-1"
    assert policy.generated_username("Newsletter EU", ["newsletter-eu-1", "newsletter-eu-3"]) == "newsletter-eu-2"
    generated = policy.generated_username("Shop", [f"shop-{n}" for n in range(1, 50)])
    assert generated == "shop-50"
    assert policy.validate_username(generated) == generated

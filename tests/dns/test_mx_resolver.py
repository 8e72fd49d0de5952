"""MX routes through real dnspython queries to a real DNS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from harness.dns import DnsServer
from relay.mx import TEMPORARY_TTL, MxHost, MxResolver, MxRoute, RouteFailure, resolver_for
from relay.nameserver import RESOLVER_ENV, ResolverError
from relay.reasons import Reason
from tests.dns.conftest import Clock


def resolver(server: DnsServer, clock: Clock | None = None, *, seed: int = 1, timeout: float = 5.0) -> MxResolver:
    return MxResolver(server.nameserver, timeout=timeout, rng=random.Random(seed), clock=clock or Clock())


async def failure(resolver: MxResolver, domain: str) -> RouteFailure:
    with pytest.raises(RouteFailure) as caught:
        await resolver.route(domain)
    return caught.value


async def test_mx_hosts_in_preference_order_with_their_addresses(dns_server: DnsServer) -> None:
    dns_server.set("example.test", "MX", "20 backup.example.test", "10 mx.example.test")
    dns_server.set("mx.example.test", "A", "127.0.0.2", "127.0.0.3")
    dns_server.set("mx.example.test", "AAAA", "::1")
    dns_server.set("backup.example.test", "A", "127.0.0.4")
    route = await resolver(dns_server).route("example.test")
    assert (route.domain, route.implicit) == ("example.test", False)
    assert [(host.name, host.preference) for host in route.hosts] == [("mx.example.test", 10), ("backup.example.test", 20)]
    first = route.hosts[0].addresses
    assert sorted(first[:2]) == ["127.0.0.2", "127.0.0.3"] and first[2:] == ("::1",)  # IPv4 first
    assert route.hosts[1].addresses == ("127.0.0.4",)


async def test_a_mail_domain_in_one_call(dns_server: DnsServer) -> None:
    host = dns_server.mail_domain("dest042.test", "127.0.0.42", "::1")
    route = await resolver(dns_server).route("dest042.test")
    assert route.hosts == (MxHost(host, 10, ("127.0.0.42", "::1")),) and host == "mx.dest042.test"


async def test_no_mx_means_the_domains_own_addresses(dns_server: DnsServer) -> None:
    dns_server.set("plain.test", "A", "127.0.0.5")
    route = await resolver(dns_server).route("PLAIN.test.")
    assert route == MxRoute("plain.test", (MxHost("plain.test", 0, ("127.0.0.5",)),), implicit=True)


async def test_null_mx_fails_at_once_with_5_1_10(dns_server: DnsServer) -> None:
    dns_server.null_mx("null.test")
    dns_server.set("null.test", "A", "127.0.0.6")  # an address does not matter: no mail
    found = await failure(resolver(dns_server), "null.test")
    assert (found.permanent, found.enhanced, found.reason) == (True, "5.1.10", Reason.FAILED_NULL_MX)
    assert dns_server.count("null.test", "A") == 0


async def test_a_domain_that_does_not_exist_fails_with_5_1_2(dns_server: DnsServer) -> None:
    found = await failure(resolver(dns_server), "gone.test")
    assert (found.permanent, found.enhanced, found.reason) == (True, "5.1.2", Reason.FAILED_NO_DOMAIN)
    assert "does not exist" in str(found)


async def test_no_mx_and_no_address_fails_with_5_1_2(dns_server: DnsServer) -> None:
    dns_server.set("bare.test", "TXT", "v=spf1 -all")  # the name exists, nothing to deliver to
    found = await failure(resolver(dns_server), "bare.test")
    assert (found.permanent, found.enhanced, found.reason) == (True, "5.1.2", Reason.FAILED_NO_MAIL_HOST)


async def test_mx_hosts_without_addresses(dns_server: DnsServer) -> None:
    dns_server.set("half.test", "MX", "10 nowhere.half.test", "20 mx.half.test")
    dns_server.set("mx.half.test", "AAAA", "::1")
    route = await resolver(dns_server).route("half.test")
    assert route.hosts == (MxHost("mx.half.test", 20, ("::1",)),)  # the host without one is left out

    dns_server.set("broken.test", "MX", "10 nowhere.broken.test")
    found = await failure(resolver(dns_server), "broken.test")
    assert (found.permanent, found.enhanced, found.reason) == (True, "5.4.4", Reason.FAILED_NO_MAIL_HOST)
    assert "nowhere.broken.test" in str(found)


@pytest.mark.parametrize("behaviour", ["silent", "servfail", "refused"])
async def test_dns_trouble_defers_with_4_4_3(dns_server: DnsServer, behaviour: str) -> None:
    dns_server.behave("flaky.test", behaviour)
    found = await failure(resolver(dns_server, timeout=0.5), "flaky.test")
    assert (found.permanent, found.enhanced, found.reason) == (False, "4.4.3", Reason.DEFERRED_DNS)
    said = {"silent": "timed out", "servfail": "SERVFAIL", "refused": "REFUSED"}[behaviour]
    assert said in str(found)


async def test_trouble_looking_up_the_mx_hosts_defers(dns_server: DnsServer) -> None:
    dns_server.set("slowhost.test", "MX", "10 mx.slowhost.test")
    dns_server.behave("mx.slowhost.test", "servfail")
    found = await failure(resolver(dns_server), "slowhost.test")
    assert (found.permanent, found.enhanced) == (False, "4.4.3")
    assert "addresses of its MX hosts" in str(found) and "SERVFAIL" not in found.domain


async def test_a_route_is_cached_for_the_lowest_ttl_of_its_records(dns_server: DnsServer, clock: Clock) -> None:
    dns_server.set("ttl.test", "MX", "10 mx.ttl.test", ttl=300)
    dns_server.set("mx.ttl.test", "A", "127.0.0.2", ttl=60)
    mx = resolver(dns_server, clock)
    first = await mx.route("ttl.test")
    dns_server.set("mx.ttl.test", "A", "127.0.0.9", ttl=60)
    clock.advance(59)
    assert await mx.route("ttl.test") == first  # still the cached answer
    assert (mx.stats.hits, mx.stats.misses, dns_server.count("mx.ttl.test", "A")) == (1, 1, 1)
    clock.advance(2)
    again = await mx.route("ttl.test")
    assert again.hosts[0].addresses == ("127.0.0.9",)
    assert (mx.stats.hits, mx.stats.misses, dns_server.count("mx.ttl.test", "A")) == (1, 2, 2)


async def test_a_ttl_of_zero_is_never_cached(dns_server: DnsServer, clock: Clock) -> None:
    dns_server.set("zero.test", "A", "127.0.0.2", ttl=0)
    mx = resolver(dns_server, clock)
    await mx.route("zero.test")
    await mx.route("zero.test")
    assert (mx.stats.hits, mx.stats.misses) == (0, 2)


async def test_negative_answers_are_cached_by_the_soa_minimum(clock: Clock) -> None:
    server = DnsServer(negative_ttl=120)
    await server.start()
    try:
        mx = resolver(server, clock)
        await failure(mx, "later.test")
        server.set("later.test", "A", "127.0.0.7")
        clock.advance(119)
        assert (await failure(mx, "later.test")).reason is Reason.FAILED_NO_DOMAIN  # cached
        assert server.count("later.test", "MX") == 1
        clock.advance(2)
        assert (await mx.route("later.test")).implicit
    finally:
        await server.stop()


async def test_temporary_failures_are_asked_again_after_a_short_while(dns_server: DnsServer, clock: Clock) -> None:
    dns_server.behave("down.test", "servfail")
    dns_server.set("down.test", "A", "127.0.0.8")
    mx = resolver(dns_server, clock)
    await failure(mx, "down.test")
    dns_server.behave("down.test", None)
    clock.advance(TEMPORARY_TTL - 1)
    assert not (await failure(mx, "down.test")).permanent  # every queued message fails fast
    assert dns_server.count("down.test", "MX") == 1
    clock.advance(2)
    assert (await mx.route("down.test")).hosts[0].addresses == ("127.0.0.8",)


async def test_a_failed_mx_host_lookup_keeps_the_route_short_lived(dns_server: DnsServer, clock: Clock) -> None:
    dns_server.set("mixed.test", "MX", "10 a.mixed.test", "10 b.mixed.test", ttl=3600)
    dns_server.set("a.mixed.test", "A", "127.0.0.2", ttl=3600)
    dns_server.behave("b.mixed.test", "servfail")
    mx = resolver(dns_server, clock)
    assert [h.name for h in (await mx.route("mixed.test")).hosts] == ["a.mixed.test"]
    dns_server.behave("b.mixed.test", None)
    dns_server.set("b.mixed.test", "A", "127.0.0.3")
    clock.advance(TEMPORARY_TTL + 1)
    assert sorted(h.name for h in (await mx.route("mixed.test")).hosts) == ["a.mixed.test", "b.mixed.test"]


async def test_equal_preferences_are_tried_in_random_order(dns_server: DnsServer, clock: Clock) -> None:
    names = [f"mx{i}.even.test" for i in range(3)]
    dns_server.set("even.test", "MX", *(f"10 {name}" for name in names), "5 first.even.test", "50 last.even.test")
    for i, name in enumerate([*names, "first.even.test", "last.even.test"]):
        dns_server.set(name, "A", f"127.0.1.{i + 1}", ttl=0)  # nothing cached: a fresh order each time
    mx = resolver(dns_server, clock, seed=7)
    seen: Counter[tuple[str, ...]] = Counter()
    for _ in range(120):
        route = await mx.route("even.test")
        order = tuple(host.name for host in route.hosts)
        assert order[0] == "first.even.test" and order[-1] == "last.even.test"
        seen[order[1:4]] += 1
    # All six orders of the three equals turn up, none hugely more than the others
    # (seeded: the counts are the same on every run).
    assert len(seen) == 6 and max(seen.values()) < 3 * min(seen.values())
    # The same seed gives the same sequence.
    replay = resolver(dns_server, clock, seed=7)
    assert [h.name for h in (await replay.route("even.test")).hosts] == [
        h.name for h in (await resolver(dns_server, clock, seed=7).route("even.test")).hosts
    ]


async def test_an_idn_domain_is_looked_up_in_its_a_label_form(dns_server: DnsServer) -> None:
    dns_server.set("xn--bcher-kva.test", "MX", "10 mx.xn--bcher-kva.test")
    dns_server.set("mx.xn--bcher-kva.test", "A", "127.0.0.2")
    route = await resolver(dns_server).route("Bücher.test")
    assert route.domain == "xn--bcher-kva.test" and route.hosts[0].name == "mx.xn--bcher-kva.test"
    assert dns_server.queries[0] == ("xn--bcher-kva.test", "MX", "udp")


@pytest.mark.parametrize("domain", ["[127.0.0.1]", "", "a..b.test", "x" * 64 + ".test", "bad\u200d\u0000.test"])
async def test_what_cannot_be_a_dns_name_fails_without_a_query(dns_server: DnsServer, domain: str) -> None:
    found = await failure(resolver(dns_server), domain)
    assert (found.permanent, found.enhanced, found.reason) == (True, "5.1.2", Reason.FAILED_NO_DOMAIN)
    assert "\x00" not in str(found) and dns_server.queries == []


async def test_a_cname_is_followed(dns_server: DnsServer) -> None:
    dns_server.set("alias.test", "CNAME", "real.test")
    dns_server.set("real.test", "MX", "10 mx.real.test")
    dns_server.set("mx.real.test", "CNAME", "box.real.test")
    dns_server.set("box.real.test", "A", "127.0.0.2")
    route = await resolver(dns_server).route("alias.test")
    assert route.hosts == (MxHost("mx.real.test", 10, ("127.0.0.2",)),)


async def test_a_large_mx_set_comes_over_tcp(dns_server: DnsServer) -> None:
    # Unique long first labels (name compression cannot shrink them): over 512 bytes.
    hosts = [f"mx{i:02}-{'h' * 50}.big.test" for i in range(16)]
    dns_server.set("big.test", "MX", *(f"{i} {host}" for i, host in enumerate(hosts)))
    for host in hosts:
        dns_server.set(host, "A", "127.0.0.2")
    route = await resolver(dns_server).route("big.test")
    assert [h.name for h in route.hosts] == hosts[:10]  # MAX_HOSTS
    assert ("big.test", "MX", "tcp") in dns_server.queries


async def test_concurrent_routes_for_one_domain_share_one_lookup(dns_server: DnsServer) -> None:
    dns_server.set("busy.test", "A", "127.0.0.2")
    mx = resolver(dns_server)
    routes = await asyncio.gather(*(mx.route("busy.test") for _ in range(20)))
    assert len(set(routes)) == 1
    assert dns_server.count("busy.test", "MX") == 1 and (mx.stats.misses, mx.stats.hits) == (1, 19)


async def test_resolver_for_uses_the_setting_then_the_environment(dns_server: DnsServer) -> None:
    dns_server.set("env.test", "A", "127.0.0.2")
    from_setting = resolver_for(dns_server.address, {RESOLVER_ENV: "127.0.0.1:1"})
    assert from_setting.nameserver == dns_server.nameserver
    assert (await from_setting.route("env.test")).implicit
    from_env = resolver_for(None, {RESOLVER_ENV: dns_server.address})
    assert from_env.nameserver == dns_server.nameserver
    assert (await from_env.route("env.test")).implicit
    assert resolver_for("", {RESOLVER_ENV: " "}).nameserver is None  # the system's


@pytest.mark.parametrize(
    ("setting", "env", "named"),
    [("dns.example:53", {}, "store setting dns.resolver"), (None, {RESOLVER_ENV: "127.0.0.1:0"}, f"${RESOLVER_ENV}")],
)
def test_a_bad_resolver_value_is_one_line_naming_its_source(setting: str | None, env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError) as caught:
        resolver_for(setting, env)
    assert isinstance(caught.value, ResolverError)
    message = str(caught.value)
    assert message.startswith(named) and "\n" not in message

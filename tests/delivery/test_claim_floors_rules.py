"""The floors' bookkeeping (relay.store.claim_floors), a pure function of the clock
the caller passes: when a claim becomes a floor, when the claims look from the
front, what lowers or forgets them."""

from __future__ import annotations

from relay.store.claim_floors import ClaimFloors


def floors_at(start: float = 100.0, **kw: float) -> ClaimFloors:
    floors = ClaimFloors(**kw)
    assert floors.floors(start) == {}  # the first claim looks from the front
    return floors


def test_a_claim_is_a_floor_only_once_it_is_lag_plus_step_old() -> None:
    floors = floors_at(lag=1.0, step=0.05, check=5.0)
    floors.claimed(100.0, [(1, 41), (1, 40), (3, 7)])
    assert floors.floors(100.5) == {}
    assert floors.floors(101.04) == {}
    assert floors.floors(101.06) == {1: 42, 3: 8}


def test_claims_within_a_step_share_an_entry_and_a_later_one_waits_its_turn() -> None:
    floors = floors_at(lag=1.0, step=0.1, check=50.0)
    floors.claimed(100.00, [(2, 10)])
    floors.claimed(100.05, [(2, 20)])  # same entry: the floor becomes 21 when the entry is ripe
    floors.claimed(100.50, [(2, 30)])
    assert floors.floors(101.11) == {2: 21}
    assert floors.floors(101.59) == {2: 21}
    assert floors.floors(101.61) == {2: 31}


def test_a_floor_never_moves_back_from_a_lower_claim() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 50)])
    floors.claimed(100.1, [(1, 20)])  # a message made ready again under the floor, claimed
    assert floors.floors(100.2) == {1: 51}


def test_every_check_seconds_one_claim_looks_from_the_front_and_the_floors_stay() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=5.0)
    floors.claimed(100.0, [(1, 10)])
    assert floors.floors(104.9) == {1: 11}
    assert floors.floors(105.0) == {}  # the check
    floors.claimed(105.0, [(1, 11)])  # it found nothing under the floor
    assert floors.floors(105.1) == {1: 12} and floors.checks == 2 and floors.forgotten == 0


def test_a_check_that_finds_mail_under_a_floor_forgets_them_all() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=5.0)
    floors.claimed(100.0, [(1, 10), (2, 30)])
    assert floors.floors(105.0) == {}
    floors.claimed(105.0, [(1, 4)])  # mail under the floor: there may be more
    assert floors.forgotten == 1
    assert floors.floors(105.1) == {1: 5}  # only what the check itself claimed


def test_mail_ready_again_lowers_its_priority_floor_only() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 10), (2, 30)])
    floors.lower([(2, 12)])
    assert floors.floors(100.1) == {1: 11, 2: 12}


def test_forget_starts_over_until_new_claims_ripen() -> None:
    floors = floors_at(lag=1.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 10)])
    assert floors.floors(101.0) == {1: 11}
    floors.forget()
    assert floors.floors(101.5) == {}
    floors.claimed(101.5, [(1, 11)])
    assert floors.floors(102.5) == {1: 12}

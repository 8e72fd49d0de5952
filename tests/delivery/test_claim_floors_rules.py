"""The floors' bookkeeping (relay.store.claim_floors), a pure function of the clock
the caller passes: when a claim's floor is confirmed, when the claims look from the
front, what lowers or forgets them."""

from __future__ import annotations

from relay.store.claim_floors import ClaimFloors


def floors_at(start: float = 100.0, **kw: float) -> ClaimFloors:
    floors = ClaimFloors(**kw)
    assert floors.floors(start) == {}  # the first claim looks from the front
    return floors


def test_a_floor_is_confirmed_by_a_claim_a_lag_later_that_went_past_it() -> None:
    floors = floors_at(lag=1.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 40), (1, 41), (3, 7)])
    floors.claimed(100.5, [(1, 50)])  # too soon: not a confirmation
    assert floors.floors(100.6) == {}
    floors.claimed(101.0, [(1, 60)])  # a second after the first: confirms 42 (and not 51 yet)
    assert floors.floors(101.1) == {1: 42}
    floors.claimed(101.6, [(1, 70)])
    assert floors.floors(101.7) == {1: 51}


def test_without_a_claim_in_between_no_floor_is_used_however_long_it_waits() -> None:
    # Mail committed out of id order just after a claim: the next claim, however late,
    # looks again from the floor before (and finds it).
    floors = floors_at(lag=1.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(2, 10)])
    assert floors.floors(140.0) == {}


def test_a_claim_that_went_on_to_lower_priorities_confirms_the_ones_it_read_to_their_end() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 10), (2, 20)])
    floors.claimed(100.1, [(3, 30)])  # priorities 1 and 2 gave nothing: read to their end
    assert floors.floors(100.2) == {1: 11, 2: 21}


def test_claims_within_a_step_share_an_entry() -> None:
    floors = floors_at(lag=1.0, step=0.1, check=50.0)
    floors.claimed(100.00, [(2, 10)])
    floors.claimed(100.05, [(2, 20)])  # the same entry: its floor is now 21, still dated 100.00
    floors.claimed(101.01, [(2, 30)])
    assert floors.floors(101.02) == {2: 21}


def test_a_floor_never_moves_back_from_a_lower_claim() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 50)])
    floors.claimed(100.1, [(1, 60)])
    floors.claimed(100.2, [(1, 20)])  # a message made ready again under the floor, claimed
    assert floors.floors(100.3) == {1: 51}


def test_every_check_seconds_a_claim_looks_from_the_front_and_only_a_claim_uses_the_check_up() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=5.0)
    floors.claimed(100.0, [(1, 10)])
    floors.claimed(100.1, [(1, 11)])
    assert floors.floors(104.9) == {1: 11}
    assert floors.floors(105.0) == {}  # the check is due…
    assert floors.floors(105.5) == {}  # …and stays due while no claim made it
    floors.claimed(105.5, [(1, 12)])  # it found nothing under the floor
    assert floors.floors(105.6) == {1: 12} and floors.checks == 2 and floors.forgotten == 0


def test_a_check_that_finds_mail_under_a_floor_forgets_them_all() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=5.0)
    floors.claimed(100.0, [(1, 10), (2, 30)])
    floors.claimed(100.1, [(3, 40)])
    assert floors.floors(104.0) == {1: 11, 2: 31}
    assert floors.floors(105.0) == {}
    floors.claimed(105.0, [(1, 4)])  # mail under the floor: there may be more
    assert floors.forgotten == 1
    assert floors.floors(105.1) == {}


def test_mail_ready_again_lowers_its_priority_floor_and_the_entries_to_come() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 10), (2, 30)])
    floors.claimed(100.1, [(3, 40)])
    floors.claimed(100.2, [(2, 50)])  # pending for priority 2: 51
    floors.lower([(2, 12)])
    assert floors.floors(100.3) == {1: 11, 2: 12}
    floors.claimed(100.4, [(2, 60)])  # confirms the lowered entry, not 51
    assert floors.floors(100.5) == {1: 11, 2: 12}


def test_forget_starts_over_until_new_floors_are_confirmed() -> None:
    floors = floors_at(lag=0.0, step=0.0, check=50.0)
    floors.claimed(100.0, [(1, 10)])
    floors.claimed(100.1, [(1, 11)])
    assert floors.floors(100.2) == {1: 11}
    floors.forget()
    assert floors.floors(100.3) == {}
    floors.claimed(100.3, [(1, 12)])
    floors.claimed(100.4, [(1, 13)])
    assert floors.floors(100.5) == {1: 13}

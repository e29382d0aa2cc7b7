"""The lease's pure decisions (uploads/tus/lease.py): when a holder renews, when it gives up."""

from upload_gateway.uploads.tus.lease import LeaseTerms, lease_status, renewal_delay_s

TERMS = LeaseTerms(ttl_s=20.0)


def status(*, after_s: float, lost: bool = False) -> str:
    return lease_status(TERMS, confirmed_at=100.0, lost=lost, now=100.0 + after_s)


def test_a_just_confirmed_lease_is_held():
    assert status(after_s=0) == "held"
    assert status(after_s=4.9) == "held"


def test_a_lease_is_renewed_after_a_quarter_of_its_ttl():
    assert status(after_s=5.0) == "renew"
    assert status(after_s=14.9) == "renew"


def test_a_holder_stops_before_the_database_would_let_another_request_claim():
    assert status(after_s=15.0) == "lost"
    assert TERMS.usable_for_s < TERMS.ttl_s
    # Three renewals can fail before the holder gives up.
    assert TERMS.usable_for_s >= 3 * TERMS.renew_every_s


def test_a_lease_the_database_gave_to_another_request_is_lost_at_once():
    assert status(after_s=0, lost=True) == "lost"


def test_renewals_follow_the_schedule_from_the_last_confirmation():
    assert renewal_delay_s(TERMS, confirmed_at=100.0, now=101.0, failures=0) == 4.0
    assert renewal_delay_s(TERMS, confirmed_at=100.0, now=107.0, failures=0) == 0.0


def test_failed_renewals_are_retried_sooner_backing_off_up_to_the_schedule():
    delays = [renewal_delay_s(TERMS, confirmed_at=100.0, now=101.0, failures=n) for n in (1, 2, 3, 4, 10)]
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]

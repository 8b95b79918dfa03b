import threading

from guards import WrongPasswordLimiter
from support import T0


def test_the_limiter_refuses_an_address_after_the_limit_within_the_window():
    limiter = WrongPasswordLimiter(limit=3, window=60, max_clients=10)
    assert [limiter.record_wrong("a", T0 + t) for t in (0, 30, 59)] == [False, False, True]
    assert (limiter.retry_after("a", T0 + 59), limiter.retry_after("a", T0 + 118.5)) == (60, 0.5)
    assert limiter.retry_after("b", T0 + 59) == 0
    assert limiter.retry_after("a", T0 + 119) == 0
    # Counting starts afresh after a refusal.
    assert [limiter.record_wrong("a", T0 + t) for t in (119, 120, 121)] == [False, False, True]


def test_the_limiter_counts_only_the_last_window():
    limiter = WrongPasswordLimiter(limit=3, window=60, max_clients=10)
    assert [limiter.record_wrong("a", T0 + t) for t in (0, 30, 60, 91, 95)] == [False, False, False, False, True]


def test_the_limiter_remembers_a_bounded_number_of_addresses():
    limiter = WrongPasswordLimiter(limit=1, window=60, max_clients=100)
    for n in range(10_000):
        limiter.record_wrong(f"10.0.{n // 256}.{n % 256}", T0)
    assert limiter.remembered() == 100
    assert limiter.retry_after("10.0.0.0", T0) == 0  # the least recently wrong was forgotten
    assert limiter.retry_after("10.0.39.15", T0) == 60  # the most recent is still refused
    limiter.record_wrong("192.0.2.1", T0 + 60)
    assert limiter.remembered() == 1  # records whose window has passed are dropped


def test_the_limiter_counts_every_wrong_password_from_concurrent_threads():
    limiter = WrongPasswordLimiter(limit=800, window=60, max_clients=10)
    refusals = []

    def guess():
        refusals.extend(limiter.record_wrong("a", T0) for _ in range(100))

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert refusals.count(True) == 1
    assert limiter.retry_after("a", T0) == 60

import threading

from guards import Refusal, Sessions, WrongPasswordLimiter
from support import T0


def seconds_left(limiter, client, now):
    refusal = limiter.refusal(client, now)
    return 0 if refusal is None else refusal.until - now


def test_the_limiter_refuses_an_address_after_the_limit_within_the_window():
    limiter = WrongPasswordLimiter(limit=3, window=60, global_limit=100)
    assert [limiter.record_wrong("a", T0 + t) for t in (0, 30, 59)] == [None, None, Refusal(T0 + 119, everyone=False)]
    assert (seconds_left(limiter, "a", T0 + 59), seconds_left(limiter, "a", T0 + 118.5)) == (60, 0.5)
    assert limiter.refusal("b", T0 + 59) is None
    assert limiter.refusal("a", T0 + 119) is None
    # Counting starts afresh after a refusal.
    assert [limiter.record_wrong("a", T0 + t) is not None for t in (119, 120, 121)] == [False, False, True]


def test_the_limiter_counts_only_the_last_window():
    limiter = WrongPasswordLimiter(limit=3, window=60, global_limit=100)
    assert [limiter.record_wrong("a", T0 + t) is not None for t in (0, 30, 60, 91, 95)] == [
        False,
        False,
        False,
        False,
        True,
    ]


def test_the_global_limit_refuses_everyone_and_counts_nothing_meanwhile():
    limiter = WrongPasswordLimiter(limit=5, window=60, global_limit=20)
    results = [limiter.record_wrong(f"10.0.0.{n}", T0 + n) for n in range(20)]
    assert results[:19] == [None] * 19 and results[19] == Refusal(T0 + 79, everyone=True)
    assert limiter.refusal("192.0.2.1", T0 + 20) == Refusal(T0 + 79, everyone=True)
    assert limiter.record_wrong("192.0.2.1", T0 + 20) is None  # never looked at, never counted
    assert limiter.refusal("192.0.2.1", T0 + 79) is None


def test_however_many_addresses_guess_only_a_bounded_number_is_remembered():
    limiter = WrongPasswordLimiter(limit=2, window=60, global_limit=20)
    for n in range(10_000):
        limiter.record_wrong(f"10.0.{n // 256}.{n % 256}", T0 + n * 0.001)
    assert limiter.remembered() <= 40
    for n in range(10_000):  # once everyone may try again, another crowd of addresses
        limiter.record_wrong(f"10.1.{n // 256}.{n % 256}", T0 + 61 + n * 0.001)
    assert limiter.remembered() <= 40


def test_an_address_refused_stays_refused_whatever_other_addresses_do():
    limiter = WrongPasswordLimiter(limit=2, window=60, global_limit=1000)
    limiter.record_wrong("refused", T0)
    limiter.record_wrong("refused", T0 + 1)
    for n in range(900):
        limiter.record_wrong(f"10.0.{n // 256}.{n % 256}", T0 + 2)
    assert limiter.refusal("refused", T0 + 60) == Refusal(T0 + 61, everyone=False)


def test_the_limiter_counts_every_wrong_password_from_concurrent_threads():
    limiter = WrongPasswordLimiter(limit=800, window=60, global_limit=10_000)
    refusals = []

    def guess():
        refusals.extend(limiter.record_wrong("a", T0) for _ in range(100))

    threads = [threading.Thread(target=guess) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len([refusal for refusal in refusals if refusal is not None]) == 1
    assert seconds_left(limiter, "a", T0) == 60


def test_an_address_that_gave_a_right_secret_is_not_refused_with_everyone_but_keeps_its_own_limit():
    limiter = WrongPasswordLimiter(limit=3, window=60, global_limit=5, trust=3600, max_trusted=2)
    limiter.record_right("admin", T0)
    for n in range(5):
        limiter.record_wrong(f"10.0.0.{n}", T0 + 1)
    assert limiter.refusal("stranger", T0 + 2) == Refusal(T0 + 61, everyone=True)
    assert limiter.refusal("admin", T0 + 2) is None
    # Its own wrong passwords are looked at, so counted, even while everyone else is refused.
    assert [limiter.record_wrong("admin", T0 + 2) for _ in range(3)][-1] == Refusal(T0 + 62, everyone=False)
    assert limiter.refusal("admin", T0 + 3) == Refusal(T0 + 62, everyone=False)


def test_trust_ends_after_its_time_and_only_the_most_recently_right_addresses_are_trusted():
    limiter = WrongPasswordLimiter(limit=3, window=60, global_limit=1, trust=3600, max_trusted=2)
    for n, address in enumerate(("a", "b", "c")):
        limiter.record_right(address, T0 + n)
    limiter.record_right("b", T0 + 3)  # b is now the most recently right, then c; a is forgotten
    limiter.record_right("d", T0 + 4)  # c is forgotten
    limiter.record_wrong("guesser", T0 + 5)
    assert [limiter.refusal(address, T0 + 6) is None for address in "abcd"] == [False, True, False, True]
    limiter.record_wrong("guesser", T0 + 3603)
    assert limiter.refusal("d", T0 + 3603.5) is None  # trusted until T0 + 3604
    assert limiter.refusal("b", T0 + 3603.5) == Refusal(T0 + 3663, everyone=True)  # trusted until T0 + 3603


def test_sessions_are_random_bounded_and_the_least_recently_used_ends_first():
    sessions = Sessions(lifetime=100, max_sessions=2)
    first, second = sessions.start(T0), sessions.start(T0)
    assert first != second and len(first) >= 40
    assert sessions.use(first, T0 + 1)  # now second is the least recently used
    third = sessions.start(T0 + 2)
    assert [sessions.use(session, T0 + 3) for session in (first, second, third)] == [True, False, True]
    assert not sessions.use("made-up", T0 + 3)
    sessions.end(first)
    assert not sessions.use(first, T0 + 4)
    assert sessions.use(third, T0 + 102) and not sessions.use(third, T0 + 202)


def test_after_the_wall_clock_steps_back_no_refusal_or_count_lasts_more_than_a_window_and_memory_stays_bounded():
    limiter = WrongPasswordLimiter(limit=3, window=60, global_limit=20)
    for t in range(3):
        limiter.record_wrong("a", T0 + t)  # a is refused until T0 + 62
    for n in range(20):
        limiter.record_wrong(f"10.0.0.{n}", T0 + 3)  # everyone is refused until T0 + 63
    limiter.record_wrong("b", T0 + 70)
    limiter.record_wrong("b", T0 + 71)  # one more and b is refused
    back = T0 - 86_400  # NTP steps the clock back a day
    assert seconds_left(limiter, "a", back) <= 60 and seconds_left(limiter, "c", back) <= 60
    assert limiter.refusal("a", back + 60) is None and limiter.refusal("c", back + 60) is None
    assert limiter.record_wrong("b", back + 61) is None  # its two were a minute ago at most
    # Guessers from then on are forgotten as before, though one address was last wrong "a day later".
    limiter = WrongPasswordLimiter(limit=3, window=60, global_limit=20)
    limiter.record_wrong("a", T0)
    for n in range(10_000):
        limiter.record_wrong(f"10.1.{n // 256}.{n % 256}", back + n * 0.1)
    assert limiter.remembered() <= 40

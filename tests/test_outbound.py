"""outbound.py: a socket's operations end by its deadline, and each answer is read up to ANSWER_LIMIT bytes."""

import socket

import pytest

import outbound
from outbound import ANSWER_LIMIT, AnswerTooLarge, BoundedSocket, Deadline


def bounded_pair(deadline, per_operation=5.0):
    """A BoundedSocket limited by `deadline`, and the plain socket at its other end."""
    mine, theirs = socket.socketpair()
    bounded = BoundedSocket(mine.family, mine.type, mine.proto, mine.detach())
    bounded.limit(deadline, per_operation)
    return bounded, theirs


def read_all(bounded):
    """What `bounded` reads until its answer's limit stops it."""
    received = bytearray()
    with pytest.raises(AnswerTooLarge):
        while True:
            received += bounded.recv(4096)
    return bytes(received)


def test_each_answer_is_read_up_to_64_kib_and_what_follows_a_send_is_a_new_answer():
    bounded, theirs = bounded_pair(Deadline(10))
    with bounded, theirs:
        theirs.sendall(b"a" * (ANSWER_LIMIT + 10))
        assert read_all(bounded) == b"a" * ANSWER_LIMIT
        bounded.sendall(b"NEXT\r\n")
        theirs.sendall(b"b" * ANSWER_LIMIT)
        # The first answer's 10 unread bytes come first: a limit, not a filter.
        assert read_all(bounded) == b"a" * 10 + b"b" * (ANSWER_LIMIT - 10)


def test_a_read_ends_at_the_deadline_however_long_its_own_timeout_and_nothing_is_tried_after_it():
    deadline = Deadline(0.3)
    bounded, theirs = bounded_pair(deadline, per_operation=60.0)
    with bounded, theirs:
        with pytest.raises(TimeoutError):
            bounded.recv(10)
        assert deadline.expired()
        with pytest.raises(outbound.DeadlineExceeded):
            bounded.sendall(b"too late")

"""Test doubles that are real participants: a messenger that records and fails on demand."""

from __future__ import annotations

import socket
from contextlib import contextmanager
from typing import Iterator, List

from sitemessage.exceptions import MessengerWarmupException
from sitemessage.messengers.base import MessengerBase


def free_port() -> int:
    """A loopback port free a moment ago: another process may take it before it is used.

    Only for a port an external program must be told in advance (Postfix, Prosody, a worker's
    metrics server). A server in the tests binds port 0 itself and reports the port it got
    (``tests.smtp_handlers.loopback_controller``); a refused connection needs :func:`refused_port`.
    """
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextmanager
def refused_port() -> Iterator[int]:
    """A loopback port that refuses connections for as long as the block runs.

    The port stays bound (never listening), so no other process can take it meanwhile: the
    kernel answers every connection with a reset, which clients report as "connection refused".
    """
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        yield sock.getsockname()[1]


class FakeMessenger(MessengerBase):
    """Records what it is asked to deliver; ``fail_addresses`` fail, ``warmup_error`` breaks warm-up."""

    alias = 'fake'
    title = 'Fake messenger'
    address_attr = 'username'

    def __init__(self):
        self.reset()

    def reset(self):
        self.delivered: List[tuple] = []
        self.fail_addresses: dict = {}
        self.raise_in_send: Exception | None = None
        self.raise_in_after_send: Exception | None = None
        self.warmup_error: Exception | None = None
        self.leave_unmarked = False
        self.calls: List[str] = []

    def before_send(self):
        self.calls.append('before_send')
        if self.warmup_error:
            raise MessengerWarmupException(str(self.warmup_error))

    def after_send(self):
        self.calls.append('after_send')
        if self.raise_in_after_send:
            raise self.raise_in_after_send

    def send(self, message_cls, message_model, dispatch_models):
        self.calls.append('send')
        for dispatch in dispatch_models:
            if self.leave_unmarked:
                continue
            failure = self.fail_addresses.get(dispatch.address)
            if failure == 'permanent':
                self.mark_failed(dispatch, f'{dispatch.address} refused for good')
            elif failure:
                self.mark_error(dispatch, failure, message_cls)
            else:
                self.delivered.append((dispatch.address, dispatch.message_cache))
                self.mark_sent(dispatch)
            if self.raise_in_send:
                raise self.raise_in_send

    def _test_message(self, to, text):
        self.delivered.append((to, text))
        return f'delivered to {to}'

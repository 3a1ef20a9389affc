"""The contract every messenger passes: one mixin, a few hooks per messenger.

A test class for a messenger subclasses :class:`MessengerContract` and implements the hooks;
the tests below then run against that messenger's real or locally imitated peer.
"""

from __future__ import annotations

from typing import List

import pytest

from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from sitemessage.utils import register_messenger_objects


class MessengerContract:
    """Hooks to implement: ``make_messenger``, ``good_address(i)``, ``received_texts()``,
    ``break_warm_up()``, ``fail_permanently(address)``, ``fail_temporarily(address)``, ``secrets``."""

    secrets: List[str] = []

    # Hooks --------------------------------------------------------------------------------------

    def make_messenger(self):
        raise NotImplementedError

    def good_address(self, index: int) -> str:
        raise NotImplementedError

    def received_texts(self) -> List[str]:
        """Texts the peer received, in order."""
        raise NotImplementedError

    def break_warm_up(self) -> None:
        """Make the next warm-up (connection, login, verification) fail."""
        raise NotImplementedError

    def fail_permanently(self, address: str) -> None:
        """Make the peer refuse ``address`` for good (e.g. 403 blocked, 5xx SMTP)."""
        raise NotImplementedError

    def fail_temporarily(self, address: str) -> None:
        """Make the peer refuse ``address`` for now (e.g. 429, 5xx HTTP, timeout)."""
        raise NotImplementedError

    # Helpers ------------------------------------------------------------------------------------

    @pytest.fixture
    def messenger(self):
        messenger = self.make_messenger()
        register_messenger_objects(messenger)
        return messenger

    def schedule(self, messenger, text: str, addresses) -> None:
        schedule_messages(text, recipients(messenger.get_alias(), addresses))

    def statuses(self) -> List[int]:
        return list(Dispatch.objects.order_by('pk').values_list('dispatch_status', flat=True))

    def error_texts(self) -> str:
        return '\n'.join(DispatchError.objects.values_list('error_log', flat=True))

    # The contract -------------------------------------------------------------------------------

    @pytest.mark.django_db
    def test_sends_one(self, messenger):
        self.schedule(messenger, 'contract: one', self.good_address(0))
        send_scheduled_messages()
        assert self.statuses() == [Dispatch.DISPATCH_STATUS_SENT]
        assert any('contract: one' in text for text in self.received_texts())

    @pytest.mark.django_db
    def test_sends_many(self, messenger):
        addresses = [self.good_address(i) for i in range(3)]
        for number in range(2):
            self.schedule(messenger, f'contract: many {number}', addresses)
        send_scheduled_messages()
        assert self.statuses() == [Dispatch.DISPATCH_STATUS_SENT] * 6
        texts = self.received_texts()
        assert sum('contract: many 0' in t for t in texts) == 3 and sum('contract: many 1' in t for t in texts) == 3

    @pytest.mark.django_db
    def test_warm_up_failure_is_retried_later(self, messenger):
        self.break_warm_up()
        self.schedule(messenger, 'contract: warm-up', self.good_address(0))
        send_scheduled_messages()
        assert self.statuses() == [Dispatch.DISPATCH_STATUS_ERROR]
        assert DispatchError.objects.count() == 1
        assert not any('contract: warm-up' in text for text in self.received_texts())

    @pytest.mark.django_db
    def test_permanent_failure_fails_only_that_dispatch(self, messenger):
        bad, good = self.good_address(1), self.good_address(0)
        self.fail_permanently(bad)
        self.schedule(messenger, 'contract: permanent', [good, bad])
        send_scheduled_messages()
        assert self.statuses() == [Dispatch.DISPATCH_STATUS_SENT, Dispatch.DISPATCH_STATUS_FAILED]
        assert DispatchError.objects.count() == 1

    @pytest.mark.django_db
    def test_temporary_failure_is_retried(self, messenger):
        bad, good = self.good_address(1), self.good_address(0)
        self.fail_temporarily(bad)
        self.schedule(messenger, 'contract: temporary', [good, bad])
        send_scheduled_messages()
        assert self.statuses() == [Dispatch.DISPATCH_STATUS_SENT, Dispatch.DISPATCH_STATUS_ERROR]
        assert DispatchError.objects.count() == 1

    @pytest.mark.django_db
    def test_secrets_never_reach_error_texts(self, messenger):
        self.break_warm_up()
        self.schedule(messenger, 'contract: secrets', [self.good_address(0), self.good_address(1)])
        self.fail_permanently(self.good_address(1))
        send_scheduled_messages()
        errors = self.error_texts()
        assert errors
        for secret in self.secrets:
            assert secret not in errors

    @pytest.mark.django_db
    def test_several_connections_deliver_each_dispatch_once(self, messenger):
        """Three connections at once (a thread each): every dispatch sent once, none lost."""
        messenger.parallel_connections = 3
        addresses = [self.good_address(i) for i in range(3)]
        for number in range(6):
            self.schedule(messenger, f'contract: parallel {number}', addresses)
        send_scheduled_messages()
        assert self.statuses() == [Dispatch.DISPATCH_STATUS_SENT] * 18
        texts = self.received_texts()
        assert [sum(f'contract: parallel {number}' in t for t in texts) for number in range(6)] == [3] * 6

    @pytest.mark.django_db
    def test_rate_limits_send_every_dispatch_in_its_slot(self, messenger, settings):
        """Under a quota each dispatch takes a slot and goes alone; the outcomes are the same."""
        alias = messenger.get_alias()
        settings.SITEMESSAGE_RATE_LIMITS = {alias: 1000}
        settings.SITEMESSAGE_RATE_LIMITS_PER_RECIPIENT = {alias: 1000}
        bad, good = self.good_address(1), self.good_address(0)
        self.fail_permanently(bad)
        self.schedule(messenger, 'contract: limited', [good, bad, self.good_address(2)])
        send_scheduled_messages()
        sent, failed = Dispatch.DISPATCH_STATUS_SENT, Dispatch.DISPATCH_STATUS_FAILED
        assert self.statuses() == [sent, failed, sent]
        assert sum('contract: limited' in text for text in self.received_texts()) == 2

    def test_probe_delivers(self, messenger):
        messenger.send_test_message(self.good_address(0), 'contract: probe')
        assert any('contract: probe' in text for text in self.received_texts())

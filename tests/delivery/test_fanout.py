"""prepare_dispatches() in chunks: the same dispatches as one list, claimed per message, resumable."""

from __future__ import annotations

import json
from datetime import timedelta
from unittest import mock

import pytest
from django.test.utils import override_settings
from django.utils import timezone

from sitemessage.exceptions import UnknownMessageTypeError
from sitemessage.messages.base import MessageBase
from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchQuerySet, Message, PreparedDispatches, Subscription
from sitemessage.toolbox import prepare_dispatches, register_message_types, register_messenger_objects
from sitemessage.toolbox import schedule_messages as schedule
from tests.processes import ON_POSTGRES  # fixture procs: tests/processes.py via conftest

pytestmark = pytest.mark.django_db


class Newsletter(MessageBase):
    alias = 'newsletter'


class Announcement(MessageBase):
    alias = 'announcement'
    allow_user_subscription = False


class Handpicked(MessageBase):
    """Overrides get_subscribers(): prepared from its list, as in 1.4.0."""

    alias = 'handpicked'

    @classmethod
    def get_subscribers(cls, active_only=True):
        return cls.recipients('fake', ['picked1', 'picked2'])


@pytest.fixture(autouse=True)
def types():
    register_message_types(Newsletter, Announcement, Handpicked)
    register_messenger_objects(SMTPMessenger('robot@example.com'))


@pytest.fixture
def subscribers(django_user_model):
    """Users (one inactive, one without e-mail) and addresses; one address is also a user's."""
    for alias in ('newsletter', 'announcement'):
        for index in range(5):
            user = django_user_model.objects.create_user(f'u{alias}{index}', email=f'u{index}@example.com')
            Subscription.create(user, alias, 'smtp')
            Subscription.create(user, alias, 'fake')
        inactive = django_user_model.objects.create_user(f'off{alias}', email='off@example.com', is_active=False)
        Subscription.create(inactive, alias, 'smtp')
        no_email = django_user_model.objects.create_user(f'none{alias}', email='')
        Subscription.create(no_email, alias, 'smtp')
        for index in range(4):
            Subscription.create(f'list{index}@example.com', alias, 'smtp')
        Subscription.create('u2@example.com', alias, 'smtp')  # the same address as a user's: sent once
        Subscription.objects.create(message_cls=alias, messenger_cls='smtp', address='bad@x.test\r\nBcc: e@z.test')


def rows(dispatches):
    return [(d.message_id, d.messenger, d.address, d.recipient_id) for d in dispatches]


def one_list(message_type, message):
    """What 1.4.0's single list gave: every subscriber, deduplicated, in subscription order."""
    return [
        (message.pk, r.messenger, r.address, r.user and r.user.pk)
        for r in Dispatch.normalize_recipients(message_type.get_subscribers())
    ]


@pytest.mark.parametrize('chunk_size', [1, 2, 3, 2000])
def test_chunked_preparation_creates_the_dispatches_of_one_list(subscribers, chunk_size):
    ((news, _),) = schedule(Newsletter({'stext_': 'news'}))
    ((announcement, _),) = schedule(Announcement({'stext_': 'hi'}))
    expected = one_list(Newsletter, news) + one_list(Announcement, announcement)
    assert len(expected) == 2 * (5 * 2 + 4) and len({row[2] for row in expected}) < len(expected)

    with override_settings(SITEMESSAGE_PREPARE_CHUNK_SIZE=chunk_size):
        prepared = prepare_dispatches()

    assert rows(prepared) == expected
    assert rows(Dispatch.objects.order_by('pk')) == expected
    assert len(prepared) == len(expected) and prepared == list(Dispatch.objects.order_by('pk'))
    assert list(Message.objects.values_list('dispatches_ready', 'preparation_token', 'prepared_through')) == [
        (True, None, None),
        (True, None, None),
    ]
    assert prepare_dispatches() == []


def test_a_type_overriding_get_subscribers_is_prepared_from_its_list():
    ((message, _),) = schedule(Handpicked({'stext_': 'x'}))

    prepared = prepare_dispatches()

    assert [(d.messenger, d.address) for d in prepared] == [('fake', 'picked1'), ('fake', 'picked2')]
    message.refresh_from_db()
    assert (message.dispatches_ready, message.preparation_token) == (True, None)


def test_a_message_without_subscribers_waits_from_the_start(django_user_model):
    ((message, _),) = schedule(Newsletter({'stext_': 'x'}))
    user = django_user_model.objects.create_user('late', email='late@example.com', is_active=False)
    Subscription.create(user, 'newsletter', 'smtp')  # inactive: no dispatch

    assert prepare_dispatches() == []
    message.refresh_from_db()
    assert (message.dispatches_ready, message.preparation_token, message.prepared_through) == (False, None, None)

    Subscription.create('late@example.com', 'newsletter', 'smtp')
    assert [d.address for d in prepare_dispatches()] == ['late@example.com']


def test_unknown_types_raise_or_wait_unclaimed(caplog):
    Message.objects.create(cls='gone', context={'stext_': 'x'})
    Subscription.create('a@example.com', 'newsletter', 'smtp')
    schedule(Newsletter({'stext_': 'x'}))

    with pytest.raises(UnknownMessageTypeError):
        prepare_dispatches()
    assert [d.address for d in prepare_dispatches(ignore_unknown_message_types=True)] == ['a@example.com']
    assert Message.objects.get(cls='gone').preparation_token is None
    assert 'of unknown type `gone` left waiting' in caplog.text


def failing_on_call(number):
    """A ``bulk_create`` that raises on its ``number``-th call (a chunk that fails)."""
    real = DispatchQuerySet.bulk_create
    calls = []

    def bulk_create(self, objs, *args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            raise RuntimeError('the database went away')
        return real(self, objs, *args, **kwargs)

    return mock.patch.object(DispatchQuerySet, 'bulk_create', bulk_create)


@override_settings(SITEMESSAGE_PREPARE_CHUNK_SIZE=2)
def test_an_interrupted_preparation_resumes_after_its_last_chunk():
    for index in range(7):
        Subscription.create(f's{index}@example.com', 'newsletter', 'smtp')
    ((message, _),) = schedule(Newsletter({'stext_': 'x'}))

    with failing_on_call(3), pytest.raises(RuntimeError):
        prepare_dispatches()

    message.refresh_from_db()
    assert (message.dispatches_ready, message.preparation_token) == (False, None)  # freed at once, not leased
    assert sorted(Dispatch.objects.values_list('address', flat=True)) == [f's{i}@example.com' for i in range(4)]

    prepared = prepare_dispatches()

    assert [d.address for d in prepared] == [f's{i}@example.com' for i in range(4, 7)]
    assert sorted(Dispatch.objects.values_list('address', flat=True)) == [f's{i}@example.com' for i in range(7)]
    message.refresh_from_db()
    assert (message.dispatches_ready, message.prepared_through) == (True, None)


@override_settings(SITEMESSAGE_PREPARE_CHUNK_SIZE=2)
def test_a_killed_workers_message_waits_for_its_lease_then_is_finished_without_duplicates(django_user_model):
    user = django_user_model.objects.create_user('ann', email='s1@example.com')
    for index in range(5):
        Subscription.create(f's{index}@example.com', 'newsletter', 'smtp')
    Subscription.create(user, 'newsletter', 'smtp')  # the address of s1, in an earlier chunk: one dispatch
    ((message, _),) = schedule(Newsletter({'stext_': 'x'}))
    with failing_on_call(2), pytest.raises(RuntimeError):
        prepare_dispatches()
    # As a killed worker leaves it: claimed, its lease running.
    Message.objects.filter(pk=message.pk).update(
        preparation_token='dead', preparation_lease_until=timezone.now() + timedelta(seconds=60)
    )

    assert prepare_dispatches() == [] and Dispatch.objects.count() == 2

    Message.objects.filter(pk=message.pk).update(preparation_lease_until=timezone.now() - timedelta(seconds=1))
    assert len(prepare_dispatches()) == 3
    assert sorted(Dispatch.objects.values_list('address', flat=True)) == [f's{i}@example.com' for i in range(5)]


@override_settings(SITEMESSAGE_PREPARE_CHUNK_SIZE=2)
def test_a_run_that_outlived_its_lease_stops_and_leaves_the_message_to_the_new_owner(caplog):
    for index in range(6):
        Subscription.create(f's{index}@example.com', 'newsletter', 'smtp')
    ((message, _),) = schedule(Newsletter({'stext_': 'x'}))
    real = DispatchQuerySet.bulk_create

    def taken_over_after_first_chunk(self, objs, *args, **kwargs):
        created = real(self, objs, *args, **kwargs)
        Message.objects.filter(pk=message.pk).update(preparation_token='other')
        return created

    with mock.patch.object(DispatchQuerySet, 'bulk_create', taken_over_after_first_chunk):
        prepared = prepare_dispatches()

    assert [d.address for d in prepared] == ['s0@example.com', 's1@example.com']
    message.refresh_from_db()
    assert (message.preparation_token, message.dispatches_ready) == ('other', False)
    assert 'prepared by another run now' in caplog.text


def test_prepared_dispatches_behave_as_a_list():
    for index in range(3):
        Subscription.create(f's{index}@example.com', 'newsletter', 'smtp')
    schedule(Newsletter({'stext_': 'x'}))
    schedule(Handpicked({'stext_': 'x'}))

    prepared = prepare_dispatches()

    everything = list(Dispatch.objects.order_by('message_id', 'pk'))
    assert isinstance(prepared, PreparedDispatches) and len(prepared) == 5 and bool(prepared)
    assert prepared == everything and prepared[0] == everything[0] and prepared[-1] == everything[-1]
    assert prepared[1:3] == everything[1:3]
    assert repr(prepared) == '<PreparedDispatches: 5 dispatch(es)>'
    with pytest.raises(IndexError):
        prepared[5]


@override_settings(SITEMESSAGE_PREPARE_CHUNK_SIZE=1)
def test_a_users_address_met_after_the_same_address_subscription_is_sent_once(django_user_model):
    Subscription.create('ann@example.com', 'newsletter', 'smtp')
    Subscription.create('bob@example.com', 'newsletter', 'smtp')
    Subscription.create(django_user_model.objects.create_user('ann', email='ann@example.com'), 'newsletter', 'smtp')
    schedule(Newsletter({'stext_': 'x'}))

    assert [d.address for d in prepare_dispatches()] == ['ann@example.com', 'bob@example.com']


@pytest.mark.skipif(not ON_POSTGRES, reason='two processes preparing at once: run with SITEMESSAGE_TEST_DB=postgres')
def test_two_processes_preparing_at_once_create_each_dispatch_once(procs):
    procs.settings.update(PREPARE_CHUNK_SIZE=50)
    procs.orm('subscribe_and_schedule', subscribers=1500, messages=6)

    workers = [procs.start('prepare', '{}', module='tests.processes') for _ in range(2)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]

    created = [json.loads(worker.output().strip().splitlines()[-1])['prepared'] for worker in workers]
    assert sum(created) == 6 * 1500
    assert sorted(procs.orm('fanout').values()) == [[1500, 1500, True]] * 6

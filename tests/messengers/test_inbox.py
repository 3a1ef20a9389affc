"""The in-app inbox messenger: delivery keeps the text for the user's feed; the feed's queries; cleanup."""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from sitemessage.exceptions import MessengerException
from sitemessage.maintenance import cleanup_sent_messages
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.models import Dispatch, DispatchError
from sitemessage.toolbox import recipients, schedule_messages, send_scheduled_messages
from tests.inbox_helpers import deliver

pytest_plugins = ['tests.inbox_fixtures']  # fixtures: inbox, ann, bob
pytestmark = pytest.mark.django_db


def feed_texts(user):
    return [str(d.message_cache) for d in Dispatch.objects.inbox(user)]


def test_delivery_keeps_the_text_in_each_users_feed(inbox, ann, bob):
    deliver('Your order shipped', ann, bob)
    deliver('Only for Ann', ann)

    assert feed_texts(ann) == ['Only for Ann', 'Your order shipped']
    assert feed_texts(bob) == ['Your order shipped']
    assert set(Dispatch.objects.values_list('dispatch_status', flat=True)) == {Dispatch.DISPATCH_STATUS_SENT}
    assert Dispatch.objects.get(recipient=bob).address == str(bob.pk)


def test_an_address_without_a_user_fails_with_the_reason(inbox, ann):
    schedule_messages(PlainTextMessage('hello'), recipients('inbox', [ann, 'someone@example.com']))
    send_scheduled_messages()

    statuses = dict(Dispatch.objects.values_list('address', 'dispatch_status'))
    assert statuses == {
        str(ann.pk): Dispatch.DISPATCH_STATUS_SENT,
        'someone@example.com': Dispatch.DISPATCH_STATUS_FAILED,
    }
    assert "users only: 'someone@example.com'" in DispatchError.objects.get().error_log


def test_delivering_many_takes_a_constant_number_of_queries(inbox, django_user_model):
    """Storage is the engine's bulk write: 200 users' items cost what 2 do."""
    users = [django_user_model.objects.create_user(f'u{i}') for i in range(200)]

    def queries_for(to) -> int:
        schedule_messages(PlainTextMessage('x'), recipients('inbox', to))
        with CaptureQueriesContext(connection) as captured:
            send_scheduled_messages()
        return len(captured)

    few, many = queries_for(users[:2]), queries_for(users)
    assert many == few
    assert Dispatch.objects.filter(dispatch_status=Dispatch.DISPATCH_STATUS_SENT).count() == 202


def test_mark_read_and_archive_touch_only_the_owners_items(inbox, ann, bob):
    deliver('one', ann, bob)
    deliver('two', ann, bob)
    ann_first = Dispatch.objects.inbox(ann).last()
    bob_first = Dispatch.objects.inbox(bob).last()

    assert Dispatch.objects.inbox_mark_read(ann, [ann_first.pk, bob_first.pk]) == 1
    assert Dispatch.objects.inbox_unread_count(ann) == 1
    assert Dispatch.objects.inbox_unread_count(bob) == 2
    assert Dispatch.objects.inbox_archive(bob, [ann_first.pk]) == 0
    assert Dispatch.objects.inbox_mark_read(bob) == 2
    assert Dispatch.objects.inbox_unread_count(ann) == 1

    assert Dispatch.objects.inbox_archive(ann, [ann_first.pk]) == 1
    assert feed_texts(ann) == ['two']
    archived = Dispatch.objects.get(pk=ann_first.pk)
    assert archived.time_archived is not None and archived.is_read()


def test_anonymous_and_unsaved_users_have_an_empty_feed(inbox, ann):
    from django.contrib.auth.models import AnonymousUser

    deliver('x', ann)
    assert list(Dispatch.objects.inbox(AnonymousUser())) == []
    assert Dispatch.objects.inbox_unread_count(None) == 0


def test_feed_excludes_other_messengers_and_unsent_dispatches(inbox, fake_messenger, ann):
    deliver('sent', ann)
    schedule_messages(PlainTextMessage('by fake'), recipients('fake', ann))
    send_scheduled_messages()
    schedule_messages(PlainTextMessage('still pending'), recipients('inbox', ann))

    assert feed_texts(ann) == ['sent']
    assert Dispatch.objects.filter(recipient=ann).count() == 3


def test_cleanup_keeps_the_feed_and_deletes_archived_items(inbox, fake_messenger, ann):
    deliver('kept', ann)
    deliver('archived', ann)
    schedule_messages(PlainTextMessage('e-mail-like'), recipients('fake', ['x@example.com']))
    send_scheduled_messages()
    Dispatch.objects.inbox_archive(ann, [Dispatch.objects.get(message__context__contains='archived').pk])

    assert cleanup_sent_messages() == 2

    assert feed_texts(ann) == ['kept']
    assert Dispatch.objects.count() == 1


def test_probe_explains_that_the_inbox_cannot_be_probed(inbox):
    with pytest.raises(MessengerException, match='cannot be probed'):
        inbox.send_test_message('1', 'hi')


def test_users_subscribed_over_the_inbox_get_items(ann, bob):
    from sitemessage.models import Subscription
    from sitemessage.toolbox import prepare_dispatches

    Subscription.create(ann, 'plain', 'inbox')
    schedule_messages(PlainTextMessage('for subscribers'))
    prepare_dispatches()
    send_scheduled_messages()

    assert feed_texts(ann) == ['for subscribers']
    assert feed_texts(bob) == []

"""Digest windows: open, join, close (moved in the database), rendering, keys, races; and throttles."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import pytest
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sitemessage.exceptions import SiteMessageConfigurationError
from sitemessage.messages.email import EmailTextMessage
from sitemessage.messages.plain import PlainTextMessage
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.toolbox import recipients, register_message_types, schedule_messages, send_scheduled_messages

pytestmark = pytest.mark.django_db

PENDING, SENT, FAILED = Dispatch.DISPATCH_STATUS_PENDING, Dispatch.DISPATCH_STATUS_SENT, Dispatch.DISPATCH_STATUS_FAILED


class Digested(PlainTextMessage):
    alias = 'digested'
    digest_window = timedelta(minutes=10)


class CommentDigest(EmailTextMessage):
    """An e-mail listing every comment of the window (tests/testapp/templates/comments/digest.txt)."""

    alias = 'comment_digest'
    digest_window = 600  # seconds
    template = 'comments/digest.txt'

    def __init__(self, author: str, text: str, thread: str = 'main'):
        super().__init__('New comments', {'author': author, 'text': text, 'thread': thread})

    def get_digest_key(self, recipient, context):
        return context['thread']


class Throttled(PlainTextMessage):
    alias = 'throttled'
    throttle = (2, timedelta(hours=1))


class ThrottledDigest(PlainTextMessage):
    alias = 'throttled_digest'
    throttle = (2, timedelta(hours=1))
    digest_window = timedelta(minutes=5)


@pytest.fixture(autouse=True)
def types():
    register_message_types(Digested, CommentDigest, Throttled, ThrottledDigest)


def close_windows() -> int:
    """Move every digest window's closing time into the past, as time passing would."""
    past = timezone.now() - timedelta(seconds=1)
    Message.objects.exclude(digest_key='').update(digest_closes_at=past)
    return Dispatch.objects.filter(message__digest_open=True).update(next_attempt_at=past)


# Windows --------------------------------------------------------------------------------------------


def test_first_message_opens_a_window_and_later_ones_join_it(fake_messenger):
    before = timezone.now()
    for text in ('one', 'two', 'three'):
        schedule_messages(Digested(text), recipients('fake', 'ann'))

    digest = Message.objects.get()
    dispatch = Dispatch.objects.get()
    assert digest.digest_key == 'fake|ann|'
    assert digest.digest_open is True
    assert before + timedelta(minutes=10) <= digest.digest_closes_at <= timezone.now() + timedelta(minutes=10)
    assert dispatch.next_attempt_at == digest.digest_closes_at
    assert [item['stext_'] for item in digest.context['digest']] == ['one', 'two', 'three']

    assert send_scheduled_messages().sent == 0  # the window is open: nothing goes out
    assert fake_messenger.delivered == []

    close_windows()
    assert send_scheduled_messages().sent == 1
    assert fake_messenger.delivered == [('ann', 'one\ntwo\nthree')]


def test_a_short_real_window_closes_by_itself(fake_messenger, settings):
    class Quick(PlainTextMessage):
        alias = 'quick'
        digest_window = 0.5

    register_message_types(Quick)
    schedule_messages(Quick('a'), recipients('fake', 'ann'))
    schedule_messages(Quick('b'), recipients('fake', 'ann'))
    assert send_scheduled_messages().sent == 0

    import time

    time.sleep(0.6)
    assert send_scheduled_messages().sent == 1
    assert fake_messenger.delivered == [('ann', 'a\nb')]


def test_each_recipient_has_a_window_and_gets_one_dispatch(fake_messenger):
    schedule_messages(Digested('x'), recipients('fake', ['ann', 'bob']))
    schedule_messages(Digested('y'), recipients('fake', ['bob']))

    assert Message.objects.count() == 2
    close_windows()
    send_scheduled_messages()
    assert sorted(fake_messenger.delivered) == [('ann', 'x'), ('bob', 'x\ny')]


def test_after_a_window_closes_the_next_message_opens_a_new_one(fake_messenger):
    schedule_messages(Digested('first'), recipients('fake', 'ann'))
    close_windows()
    schedule_messages(Digested('second'), recipients('fake', 'ann'))  # the closed window is sealed

    assert list(Message.objects.order_by('pk').values_list('digest_open', flat=True)) == [None, True]
    send_scheduled_messages()
    assert fake_messenger.delivered == [('ann', 'first')]
    close_windows()
    send_scheduled_messages()
    assert fake_messenger.delivered == [('ann', 'first'), ('ann', 'second')]


def test_a_window_whose_dispatch_is_being_sent_is_not_joined(fake_messenger):
    schedule_messages(Digested('first'), recipients('fake', 'ann'))
    close_windows()
    claimed = Dispatch.objects.claim(10, 600)  # a sender took it: joining now would be lost
    schedule_messages(Digested('second'), recipients('fake', 'ann'))

    assert [d.message.context['stext_'] for d in claimed] == ['first']
    assert Message.objects.filter(digest_open=True).get().context['stext_'] == 'second'


def test_digest_email_renders_every_joined_context(smtp_messenger, smtp_server):
    for author, text in (('Ann', 'Nice'), ('Bob', 'Agreed'), ('Cid', 'Me too')):
        schedule_messages(CommentDigest(author, text), recipients('smtp', 'reader@example.com'))
    close_windows()

    assert send_scheduled_messages().sent == 1
    (mail,) = smtp_server.handler.messages()
    assert mail['Subject'] == 'New comments'
    assert mail['To'] == 'reader@example.com'
    assert mail.get_content().replace('\r\n', '\n') == (
        '3 new comment(s):\n- Ann: Nice\n- Bob: Agreed\n- Cid: Me too\n'
    )


def test_the_key_function_splits_a_recipients_windows(fake_messenger):
    schedule_messages(CommentDigest('Ann', 'a', thread='t1'), recipients('fake', 'reader'))
    schedule_messages(CommentDigest('Bob', 'b', thread='t2'), recipients('fake', 'reader'))
    schedule_messages(CommentDigest('Cid', 'c', thread='t1'), recipients('fake', 'reader'))

    rows = dict(Message.objects.values_list('digest_key', 'context'))
    assert {key: [item['author'] for item in context['digest']] for key, context in rows.items()} == {
        'fake|reader|t1': ['Ann', 'Cid'],
        'fake|reader|t2': ['Bob'],
    }


def test_merge_digest_decides_what_the_digest_holds(fake_messenger):
    class Counted(Digested):
        alias = 'counted'

        @classmethod
        def merge_digest(cls, digest, context):
            count = 1 if digest is None else digest['count'] + 1
            return {**context, 'count': count, 'stext_': f'{count} update(s), the last: {context["stext_"]}'}

    register_message_types(Counted)
    for text in ('a', 'b', 'c'):
        schedule_messages(Counted(text), recipients('fake', 'ann'))
    close_windows()
    send_scheduled_messages()

    assert fake_messenger.delivered == [('ann', '3 update(s), the last: c')]


def test_a_long_key_is_stored_hashed():
    long_address = 'a' * 248
    schedule_messages(Digested('x'), recipients('fake', long_address))
    schedule_messages(Digested('y'), recipients('fake', long_address))

    digest = Message.objects.get()
    assert digest.digest_key.startswith('sha256:') and len(digest.digest_key) == 71
    assert digest.context['stext_'] == 'x\ny'


def test_a_key_function_returning_a_non_string_is_refused_naming_it():
    class BadKey(Digested):
        alias = 'bad_key'

        def get_digest_key(self, recipient, context):
            return ['list']

    register_message_types(BadKey)
    with pytest.raises(
        TypeError, match=r"get_digest_key\(\) of message type `bad_key` must return a str, got \['list'\]"
    ):
        schedule_messages(BadKey('x'), recipients('fake', 'ann'))
    assert Message.objects.count() == 0


def test_without_recipients_the_subscribers_of_the_moment_get_windows(fake_messenger, user):
    from sitemessage.models import Subscription

    Subscription.create('sub@example.com', 'digested', 'fake')
    schedule_messages(Digested('x'))
    schedule_messages(Digested('y'))

    assert Message.objects.get().context['stext_'] == 'x\ny'
    close_windows()
    send_scheduled_messages()
    assert fake_messenger.delivered == [('sub@example.com', 'x\ny')]


def test_grouping_is_untouched_by_digests(fake_messenger):
    class Grouped(PlainTextMessage):
        alias = 'grouped_only'
        group_mark = 'g'

    register_message_types(Grouped)
    schedule_messages([Grouped('a'), Grouped('b')], recipients('fake', 'ann'))

    message = Message.objects.get()
    assert (message.digest_key, message.digest_open, message.digest_closes_at) == ('', None, None)
    send_scheduled_messages()
    assert fake_messenger.delivered == [('ann', 'a\nb')]


# Throttles ------------------------------------------------------------------------------------------


def test_over_the_limit_a_dispatch_is_recorded_failed_with_the_reason(fake_messenger):
    for n in range(2):
        schedule_messages(Throttled(f'm{n}'), recipients('fake', ['ann', 'bob']))
    ((_message, (dispatch,)),) = schedule_messages(Throttled('m2'), recipients('fake', 'ann'))

    dispatch.refresh_from_db()
    assert dispatch.dispatch_status == FAILED
    assert DispatchError.objects.get(dispatch=dispatch).error_log == (
        'throttled: at most 2 message(s) of type `throttled` per recipient every 1:00:00'
    )
    send_scheduled_messages()
    assert sorted(fake_messenger.delivered) == [('ann', 'm0'), ('ann', 'm1'), ('bob', 'm0'), ('bob', 'm1')]


def test_counting_is_one_query_however_many_recipients():
    people = [f'user{n}' for n in range(300)]
    schedule_messages(Throttled('first'), recipients('fake', people))
    schedule_messages(Throttled('second'), recipients('fake', people))
    with CaptureQueriesContext(connections['default']) as queries:
        schedule_messages(Throttled('third'), recipients('fake', people))

    selects = [q['sql'] for q in queries.captured_queries if q['sql'].startswith('SELECT')]
    assert len(selects) == 1 and 'COUNT(' in selects[0]
    assert len(queries.captured_queries) < 20  # inserts in bulk, never one per recipient

    counts = Dispatch.objects.values_list('dispatch_status').order_by('dispatch_status')
    assert sorted(counts.values_list('dispatch_status', flat=True)) == [PENDING] * 600 + [FAILED] * 300


def test_old_and_failed_dispatches_do_not_count():
    ((old, _dispatches),) = schedule_messages(Throttled('a'), recipients('fake', 'ann'))
    schedule_messages(Throttled('b'), recipients('fake', 'ann'))
    old.dispatch_set.update(time_created=timezone.now() - timedelta(hours=2))
    schedule_messages(Throttled('c'), recipients('fake', 'ann'))  # 'a' is older than the period
    schedule_messages(Throttled('d'), recipients('fake', 'ann'))  # throttled: 'b' and 'c'
    schedule_messages(Throttled('e'), recipients('fake', 'ann'))  # the failed 'd' does not count: still 2

    rows = Dispatch.objects.order_by('pk').values_list('dispatch_status', flat=True)
    assert list(rows) == [PENDING, PENDING, PENDING, FAILED, FAILED]


def test_over_the_limit_a_digest_type_folds_messages_into_a_window(fake_messenger):
    for n in range(5):
        schedule_messages(ThrottledDigest(f'm{n}'), recipients('fake', 'ann'))

    assert send_scheduled_messages().sent == 2  # under the limit: at once
    assert Dispatch.objects.filter(dispatch_status=FAILED).count() == 0
    digest = Message.objects.get(digest_open=True)
    assert digest.context['stext_'] == 'm2\nm3\nm4'
    close_windows()
    send_scheduled_messages()
    assert fake_messenger.delivered == [('ann', 'm0'), ('ann', 'm1'), ('ann', 'm2\nm3\nm4')]


# Bad values -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'attribute, value, error',
    [
        ('digest_window', 0, 'digest_window of message type `bad` must be positive, got 0.'),
        ('digest_window', timedelta(seconds=-5), 'must be positive, got datetime.timedelta(days=-1, seconds=86395)'),
        ('digest_window', '10m', "must be a timedelta or a number of seconds, got '10m' (str)."),
        ('digest_window', True, 'got True (bool)'),
        ('throttle', 5, 'throttle of message type `bad` must be a pair (limit, period)'),
        ('throttle', (0, 60), 'the limit must be positive, got 0.'),
        ('throttle', (2.5, 60), 'the limit must be a whole number, got 2.5 (float).'),
        ('throttle', (5, -1), 'the period must be positive, got -1.'),
        ('throttle', (5, None), 'the period must be a timedelta or a number of seconds, got None'),
    ],
)
def test_bad_windows_and_limits_are_refused_at_registration(attribute, value, error):
    bad = type('Bad', (PlainTextMessage,), {'alias': 'bad', attribute: value})

    with pytest.raises(SiteMessageConfigurationError) as caught:
        register_message_types(Digested, bad)
    assert error in str(caught.value)
    from sitemessage.toolbox import get_registered_message_types

    assert 'bad' not in get_registered_message_types()


def test_a_bad_window_from_a_property_is_refused_at_scheduling():
    class PerInstance(PlainTextMessage):
        alias = 'per_instance'

        def __init__(self, text, minutes):
            super().__init__(text)
            self.minutes = minutes

        @property
        def digest_window(self):
            return timedelta(minutes=self.minutes)

    register_message_types(PerInstance)
    schedule_messages(PerInstance('ok', 5), recipients('fake', 'ann'))
    with pytest.raises(SiteMessageConfigurationError, match=r'must be positive, got datetime.timedelta\(days=-1'):
        schedule_messages(PerInstance('bad', -1), recipients('fake', 'ann'))
    assert Message.objects.count() == 1


# Concurrency ----------------------------------------------------------------------------------------

needs_row_locks = pytest.mark.skipif(
    os.environ.get('SITEMESSAGE_TEST_DB') not in ('postgres', 'mysql'),
    reason='needs row locks of a real server: run with SITEMESSAGE_TEST_DB=postgres or mysql',
)


@needs_row_locks
@pytest.mark.django_db(transaction=True)
def test_concurrent_schedulers_join_one_window(fake_messenger):
    register_message_types(Digested)
    start = threading.Barrier(4)
    failures = []

    def scheduler(index):
        try:
            start.wait()
            for n in range(10):
                schedule_messages(Digested(f'{index}-{n}'), recipients('fake', 'ann'))
        except Exception as error:  # reported by the main thread
            failures.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=scheduler, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert failures == []
    digest = Message.objects.get()
    assert Dispatch.objects.count() == 1
    items = [item['stext_'] for item in digest.context['digest']]
    assert sorted(items) == sorted(f'{i}-{n}' for i in range(4) for n in range(10))
    close_windows()
    send_scheduled_messages()
    assert len(fake_messenger.delivered) == 1
    assert sorted(fake_messenger.delivered[0][1].split('\n')) == sorted(items)


@needs_row_locks
@pytest.mark.django_db(transaction=True)
def test_joining_while_a_sender_claims_loses_nothing(fake_messenger):
    """Joiners and a sender race at the window's close: every message is delivered exactly once."""
    register_message_types(Digested)
    schedule_messages(Digested('opening'), recipients('fake', 'ann'))
    stop = threading.Event()
    failures = []

    def sender():
        try:
            while not stop.is_set():
                send_scheduled_messages()
            send_scheduled_messages()
        except Exception as error:  # reported by the main thread
            failures.append(error)
        finally:
            connections.close_all()

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        for n in range(30):
            if n % 5 == 0:
                close_windows()
            schedule_messages(Digested(f'm{n}'), recipients('fake', 'ann'))
        close_windows()
    finally:
        stop.set()
        thread.join(60)
        connections.close_all()

    assert failures == []
    delivered = [line for _address, text in fake_messenger.delivered for line in text.split('\n')]
    assert sorted(delivered) == sorted(['opening', *(f'm{n}' for n in range(30))])


# Admin ----------------------------------------------------------------------------------------------


def test_admin_lists_filter_digests_and_throttled_dispatches(admin_client):
    from tests.test_admin import changelist, results

    schedule_messages(Digested('open'), recipients('fake', 'ann'))
    schedule_messages(Digested('closed'), recipients('fake', 'bob'))
    Message.objects.filter(digest_key='fake|bob|').update(digest_closes_at=timezone.now() - timedelta(seconds=1))
    schedule_messages('plain', recipients('fake', 'cid'))
    for text in ('t1', 't2', 't3'):
        schedule_messages(Throttled(text), recipients('fake', 'dan'))

    def texts(name, **params):
        found = results(admin_client.get(changelist(name), params))
        if name == 'message':
            return sorted(m.context['stext_'] for m in found)
        return sorted(d.message.context['stext_'] for d in found)

    assert texts('message', digest='collecting') == ['open']
    assert texts('message', digest='closed') == ['closed']
    assert texts('message', digest='none') == ['plain', 't1', 't2', 't3']
    assert texts('dispatch', throttled='yes') == ['t3']
    assert texts('dispatch', throttled='no') == ['closed', 'open', 'plain', 't1', 't2']
    digest = Message.objects.get(digest_key='fake|ann|')
    page = admin_client.get(f'/admin/sitemessage/message/{digest.pk}/change/').content.decode()
    assert 'fake|ann|' in page and 'Digest window closes at' in page


# The examples of docs/digests.rst, as written ---------------------------------------------------------


def test_docs_digest_example(smtp_messenger, smtp_server):
    class CommentsDigest(EmailTextMessage):
        alias = 'comments_digest'
        digest_window = timedelta(minutes=10)  # or a number of seconds: 600
        template = 'comments/digest.txt'

        def __init__(self, author: str, text: str, thread: str):
            super().__init__('New comments', {'author': author, 'text': text, 'thread': thread})

        # Optional: one window per thread (windows are always per recipient and type).
        def get_digest_key(self, recipient, context) -> str:
            return context['thread']

    register_message_types(CommentsDigest)

    reader = recipients('smtp', 'reader@example.com')
    schedule_messages(CommentsDigest('Ann', 'Nice!', 'post-1'), reader)  # opens the window
    schedule_messages(CommentsDigest('Bob', 'Agreed.', 'post-1'), reader)  # joins it

    assert send_scheduled_messages().sent == 0
    Message.objects.update(digest_closes_at=timezone.now())  # ten minutes later
    Dispatch.objects.update(next_attempt_at=timezone.now())
    assert send_scheduled_messages().sent == 1
    (mail,) = smtp_server.handler.messages()
    assert mail.get_content().replace('\r\n', '\n') == '2 new comment(s):\n- Ann: Nice!\n- Bob: Agreed.\n'


def test_docs_throttle_examples(fake_messenger):
    class LoginAlert(PlainTextMessage):
        alias = 'login_alert'
        throttle = (3, timedelta(hours=1))  # at most 3 per recipient per hour; the period may be seconds

    class Mention(PlainTextMessage):
        alias = 'mention'
        throttle = (2, 3600)  # two at once per hour...
        digest_window = 300  # ...then the rest, five minutes at a time, as one

    register_message_types(LoginAlert, Mention)

    for attempt in range(5):
        schedule_messages(LoginAlert(f'New login #{attempt}'), recipients('fake', 'owner@example.com'))
        schedule_messages(Mention(f'mention {attempt}'), recipients('fake', 'owner@example.com'))

    errors = DispatchError.objects.filter(dispatch__message__cls='login_alert').values_list('error_log', flat=True)
    assert list(errors) == ['throttled: at most 3 message(s) of type `login_alert` per recipient every 1:00:00'] * 2
    send_scheduled_messages()
    assert [text for _address, text in fake_messenger.delivered] == [
        'New login #0',
        'mention 0',
        'New login #1',
        'mention 1',
        'New login #2',
    ]
    close_windows()
    send_scheduled_messages()
    assert fake_messenger.delivered[-1][1] == 'mention 2\nmention 3\nmention 4'


def test_new_admin_labels_are_translated_to_russian():
    from django.utils import translation

    from sitemessage.admin import DigestFilter, ThrottledFilter

    with translation.override('ru'):
        assert str(Message._meta.get_field('digest_closes_at').verbose_name) == 'Окно сводки закрывается'
        assert str(DigestFilter.title) == 'окно сводки'
        assert str(ThrottledFilter.title) == 'отброшено ограничением частоты'

"""Memory of a batch (issue 9, item 7a): one copy of a message however many recipients it has.

The figures (peak RSS of a 5 MB HTML e-mail to 40 recipients against 1) come from
benchmarks/memory_large_body.py; these tests hold the mechanisms that keep them low.
"""

from __future__ import annotations

import pytest

from sitemessage import models
from sitemessage.messages.email import EmailHtmlMessage
from sitemessage.models import DeferredText, Dispatch, raw_text
from sitemessage.sending import send_scheduled_messages
from sitemessage.toolbox import recipients, schedule_messages
from tests.testapp.sitemessages import GreetingMessage

pytestmark = pytest.mark.django_db


def test_a_claim_holds_one_message_instance_per_message(fake_messenger, django_assert_num_queries):
    schedule_messages(GreetingMessage({'name': 'All'}), recipients('fake', ['ann', 'bob', 'cid']))
    schedule_messages(GreetingMessage({'name': 'Other'}), recipients('fake', ['dan']))

    claimed = Dispatch.objects.claim(10, 60)

    assert len({id(dispatch.message) for dispatch in claimed}) == 2
    first = claimed[0].message
    assert all(dispatch.message is first for dispatch in claimed[:3])
    with django_assert_num_queries(0):
        assert [dispatch.message.context['name'] for dispatch in claimed] == ['All', 'All', 'All', 'Other']


def test_a_shared_rendering_is_held_once_and_read_as_each_recipients_own_str(fake_messenger):
    seen = []
    original_send = type(fake_messenger).send

    def send(self, message_cls, message_model, dispatch_models):
        for dispatch in dispatch_models:
            seen.append((raw_text(dispatch), dispatch.message_cache))
        original_send(self, message_cls, message_model, dispatch_models)

    schedule_messages(GreetingMessage({'name': 'All'}), recipients('fake', ['ann', 'bob', 'cid']))
    type(fake_messenger).send = send
    try:
        send_scheduled_messages()
    finally:
        type(fake_messenger).send = original_send

    held = [h for h, _text in seen]
    assert all(isinstance(h, DeferredText) for h in held)
    assert len({id(h.shared) for h in held}) == 1  # one rendering for the three of them
    texts = [text for _h, text in seen]
    assert all(type(text) is str for text in texts) and len(set(texts)) == 3  # each with its own links
    stored = dict(Dispatch.objects.values_list('address', 'message_cache'))
    assert stored == dict(fake_messenger.delivered)


@pytest.mark.parametrize('texts_per_query, text_updates', [(models.TEXTS_PER_QUERY, 1), (10, 5)])
def test_large_texts_are_stored_one_at_a_time_and_equal_what_was_sent(
    texts_per_query, text_updates, smtp_messenger, smtp_server, monkeypatch
):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    monkeypatch.setattr(models, 'TEXTS_PER_QUERY', texts_per_query)
    addresses = [f'reader{n}@example.com' for n in range(5)]
    schedule_messages(EmailHtmlMessage('News', {'contents': '<p>Long news</p>' * 50}), recipients('smtp', addresses))

    with CaptureQueriesContext(connection) as queries:
        report = send_scheduled_messages()

    assert report.sent == 5
    updates = [
        q['sql']
        for q in queries.captured_queries
        if q['sql'].startswith('UPDATE') and f'{connection.ops.quote_name("message_cache")} =' in q['sql']
    ]
    assert len(updates) == text_updates
    sent = {str(message['To']): message.get_body(('html',)).get_content() for message in smtp_server.handler.messages()}
    for dispatch in Dispatch.objects.select_related('message'):
        link = EmailHtmlMessage.get_unsubscribe_directive(dispatch.message, dispatch)
        assert link and link in dispatch.message_cache and link in sent[dispatch.address]
        assert '<p>Long news</p>' * 50 in dispatch.message_cache

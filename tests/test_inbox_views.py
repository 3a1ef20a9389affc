"""The in-app inbox pages: feed page and JSON, mark read / mark all read / archive, template tags, security."""

from __future__ import annotations

import pytest
from django.template import Context, Template, TemplateSyntaxError
from django.test import Client, RequestFactory
from django.urls import reverse
from django.utils import translation

from sitemessage.messages.plain import PlainTextMessage
from sitemessage.models import Dispatch
from sitemessage.toolbox import get_sitemessage_urls, recipients, schedule_messages, send_scheduled_messages
from tests.inbox_helpers import deliver

pytest_plugins = ['tests.inbox_fixtures']  # fixtures: inbox, ann, bob
pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("x")</script> & <b>bold</b>'


def client_for(user, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(user)
    return client


def item_of(user, text: str) -> Dispatch:
    return next(d for d in Dispatch.objects.inbox(user) if str(d.message_cache) == text)


def test_feed_page_lists_the_users_items_newest_first(ann, bob):
    deliver('First news', ann, bob)
    deliver('Second news', ann)
    deliver('For Bob only', bob)

    response = client_for(ann).get(reverse('sitemessage_inbox'))

    assert response.status_code == 200
    page = response.content.decode()
    assert page.index('Second news') < page.index('First news')
    assert 'For Bob only' not in page
    assert 'data-sitemessage-inbox-unread>2<' in page
    assert 'sitemessage/inbox.js' in page and 'sitemessage/inbox.css' in page


def test_json_feed_is_paginated(ann, settings):
    settings.SITEMESSAGE_INBOX_PAGE_SIZE = 2
    for number in range(5):
        deliver(f'news {number}', ann)
    client = client_for(ann)

    first = client.get(reverse('sitemessage_inbox_json')).json()
    last = client.get(reverse('sitemessage_inbox_json'), {'page': 3}).json()

    assert [item['text'] for item in first['items']] == ['news 4', 'news 3']
    assert (first['page'], first['num_pages'], first['has_next'], first['unread']) == (1, 3, True, 5)
    assert [item['text'] for item in last['items']] == ['news 0'] and not last['has_next']
    assert set(first['items'][0]) == {'id', 'title', 'text', 'time', 'read'}
    assert first['items'][0]['title'] == 'Text notification'


def test_mark_read_sets_the_dispatch_read_status_and_the_count_drops(ann):
    deliver('one', ann)
    deliver('two', ann)
    item = item_of(ann, 'one')
    client = client_for(ann)

    response = client.post(reverse('sitemessage_inbox_mark_read', args=[item.pk]), HTTP_ACCEPT='application/json')

    assert response.json() == {'changed': 1, 'unread': 1}
    item.refresh_from_db()
    assert item.read_status == Dispatch.READ_STATUS_READ
    assert client.get(reverse('sitemessage_inbox_json')).json()['unread'] == 1


def test_form_posts_redirect_back_to_the_feed_or_a_local_next(ann):
    deliver('one', ann)
    client = client_for(ann)
    item = item_of(ann, 'one')

    back = client.post(reverse('sitemessage_inbox_mark_read', args=[item.pk]))
    local = client.post(reverse('sitemessage_inbox_mark_all_read'), {'next': '/prefs/'})
    foreign = client.post(reverse('sitemessage_inbox_archive', args=[item.pk]), {'next': 'https://evil.example/'})

    assert back.status_code == 302 and back['Location'] == reverse('sitemessage_inbox')
    assert local['Location'] == '/prefs/'
    assert foreign['Location'] == reverse('sitemessage_inbox')


def test_mark_all_read_and_archive(ann, bob):
    deliver('one', ann, bob)
    deliver('two', ann, bob)
    client = client_for(ann)

    assert client.post(reverse('sitemessage_inbox_mark_all_read'), HTTP_ACCEPT='application/json').json() == {
        'changed': 2,
        'unread': 0,
    }
    client.post(reverse('sitemessage_inbox_archive', args=[item_of(ann, 'one').pk]))

    assert [item['text'] for item in client.get(reverse('sitemessage_inbox_json')).json()['items']] == ['two']
    assert Dispatch.objects.inbox_unread_count(bob) == 2


# Security ---------------------------------------------------------------------------------------


def test_another_users_item_answers_404_and_stays_unchanged(ann, bob):
    deliver('private', bob)
    theirs = item_of(bob, 'private')
    client = client_for(ann)

    for name in ('sitemessage_inbox_mark_read', 'sitemessage_inbox_archive'):
        assert client.post(reverse(name, args=[theirs.pk])).status_code == 404
    for bad_id in ('999999', 'abc', '-1', '9' * 30):
        assert client.post(reverse('sitemessage_inbox_mark_read', args=[bad_id])).status_code == 404
    client.post(reverse('sitemessage_inbox_mark_all_read'))

    theirs.refresh_from_db()
    assert (theirs.read_status, theirs.time_archived) == (Dispatch.READ_STATUS_UNREAD, None)
    assert 'private' not in client.get(reverse('sitemessage_inbox')).content.decode()
    assert client.get(reverse('sitemessage_inbox_json')).json()['items'] == []


def test_mutating_endpoints_refuse_get(ann):
    deliver('one', ann)
    item = item_of(ann, 'one')
    client = client_for(ann)

    for url in (
        reverse('sitemessage_inbox_mark_read', args=[item.pk]),
        reverse('sitemessage_inbox_mark_all_read'),
        reverse('sitemessage_inbox_archive', args=[item.pk]),
    ):
        assert client.get(url).status_code == 405
    item.refresh_from_db()
    assert (item.read_status, item.time_archived) == (Dispatch.READ_STATUS_UNREAD, None)


def test_mutating_endpoints_enforce_csrf(ann):
    deliver('one', ann)
    item = item_of(ann, 'one')
    client = client_for(ann, enforce_csrf_checks=True)
    urls = [
        reverse('sitemessage_inbox_mark_read', args=[item.pk]),
        reverse('sitemessage_inbox_archive', args=[item.pk]),
        reverse('sitemessage_inbox_mark_all_read'),
    ]

    for url in urls:
        assert client.post(url).status_code == 403
    item.refresh_from_db()
    assert (item.read_status, item.time_archived) == (Dispatch.READ_STATUS_UNREAD, None)

    page = client.get(reverse('sitemessage_inbox'))  # the page's forms carry the token
    token = page.context['csrf_token']
    response = client.post(urls[0], {'csrfmiddlewaretoken': str(token)})
    assert response.status_code == 302
    item.refresh_from_db()
    assert item.read_status == Dispatch.READ_STATUS_READ


def test_csrf_is_checked_without_the_middleware(ann, settings):
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if 'csrf' not in m.lower()]
    deliver('one', ann)
    client = client_for(ann, enforce_csrf_checks=True)

    assert client.post(reverse('sitemessage_inbox_mark_all_read')).status_code == 403
    assert Dispatch.objects.inbox_unread_count(ann) == 1


def test_anonymous_visitors_are_sent_to_log_in(ann, settings):
    settings.LOGIN_URL = '/login/'
    deliver('one', ann)
    client = Client()

    for url in (reverse('sitemessage_inbox'), reverse('sitemessage_inbox_json')):
        response = client.get(url)
        assert response.status_code == 302 and response['Location'].startswith('/login/')
    assert client.post(reverse('sitemessage_inbox_mark_all_read')).status_code == 302
    assert Dispatch.objects.inbox_unread_count(ann) == 1


def test_message_text_is_escaped_in_the_page_and_plain_in_the_json(ann):
    schedule_messages(PlainTextMessage(HOSTILE), recipients('inbox', ann))
    send_scheduled_messages()
    client = client_for(ann)

    page = client.get(reverse('sitemessage_inbox')).content.decode()
    data = client.get(reverse('sitemessage_inbox_json'))

    assert '<script>alert' not in page and '<b>bold' not in page
    assert '&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;' in page
    assert data['Content-Type'] == 'application/json'
    assert data.json()['items'][0]['text'] == HOSTILE  # a string for textContent, never markup
    assert b'<' not in data.content and b'\\u003Cscript\\u003E' in data.content  # as json_script() escapes


def test_subject_in_the_context_is_the_title_and_is_escaped(ann):
    from sitemessage.messages.email import EmailTextMessage

    schedule_messages(EmailTextMessage('<i>Sale</i> today', 'body'), recipients('inbox', ann))
    send_scheduled_messages()

    item = client_for(ann).get(reverse('sitemessage_inbox_json')).json()['items'][0]
    page = client_for(ann).get(reverse('sitemessage_inbox')).content.decode()
    assert item['title'] == '<i>Sale</i> today'
    assert '&lt;i&gt;Sale&lt;/i&gt; today' in page


# URLs and template tags -------------------------------------------------------------------------


def test_documented_1_4_urls_are_unchanged():
    assert [pattern.name for pattern in get_sitemessage_urls()] == ['sitemessage_unsubscribe', 'sitemessage_mark_read']


def render(source: str, user) -> str:
    request = RequestFactory().get('/')
    request.user = user
    return Template('{% load sitemessage %}' + source).render(Context({'request': request}))


def test_unread_tag_counts_the_users_unread_items(ann, bob):
    from django.contrib.auth.models import AnonymousUser

    deliver('one', ann, bob)
    deliver('two', ann)
    Dispatch.objects.inbox_mark_read(bob)

    assert render('{% sitemessage_inbox_unread %}', ann) == '2'
    assert render('{% sitemessage_inbox_unread as n %}[{{ n }}]', bob) == '[0]'
    assert render('{% sitemessage_inbox_unread %}', AnonymousUser()) == '0'


def test_latest_tag_gives_the_newest_items_escaped(ann):
    for text in ('one', 'two', HOSTILE):
        deliver(text, ann)

    output = render('{% sitemessage_inbox_latest 2 as items %}{% for i in items %}[{{ i.text }}]{% endfor %}', ann)

    assert output == '[&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;][two]'
    with pytest.raises(TemplateSyntaxError, match="got 'many'"):
        render('{% sitemessage_inbox_latest "many" as items %}', ann)


def test_page_is_translated(ann, settings):
    deliver('one', ann)
    client = client_for(ann)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = 'ru'
    settings.MIDDLEWARE = [*settings.MIDDLEWARE, 'django.middleware.locale.LocaleMiddleware']

    try:
        page = client.get(reverse('sitemessage_inbox'), HTTP_ACCEPT_LANGUAGE='ru').content.decode()
    finally:
        translation.deactivate()  # LocaleMiddleware leaves the language active on this thread

    assert 'Отметить как прочитанное' in page and 'В архив' in page


# docs/inbox.rst, run as written ------------------------------------------------------------------


def test_docs_setup_example(ann):
    from sitemessage.toolbox import recipients, schedule_messages  # as the docs import them

    schedule_messages('Your order #1042 has shipped.', recipients('inbox', [ann]))
    send_scheduled_messages()

    link = render('<a href="{% url \'sitemessage_inbox\' %}">Inbox ({% sitemessage_inbox_unread %})</a>', ann)
    assert link == '<a href="/messages/inbox/">Inbox (1)</a>'


def test_docs_template_tags_example(ann):
    deliver('A' * 100, ann)
    deliver('short', ann)
    Dispatch.objects.inbox_mark_read(ann, [item_of(ann, 'short').pk])

    output = render(
        '{% sitemessage_inbox_unread as unread %}{{ unread }}|'
        '{% sitemessage_inbox_latest 5 as items %}'
        '<ul>{% for item in items %}'
        '<li{% if not item.read %} class="unread"{% endif %}>{{ item.title }}: {{ item.text|truncatechars:80 }}</li>'
        '{% endfor %}</ul>',
        ann,
    )

    assert output == (
        f'1|<ul><li>Text notification: short</li><li class="unread">Text notification: {"A" * 79}…</li></ul>'
    )


def test_docs_mark_all_read_form_example(ann):
    deliver('one', ann)
    client = client_for(ann, enforce_csrf_checks=True)
    request = RequestFactory().get('/prefs/')
    request.user = ann
    form = Template(
        '<form method="post" action="{% url \'sitemessage_inbox_mark_all_read\' %}">'
        '{% csrf_token %}<input type="hidden" name="next" value="{{ request.path }}">'
        '<button>Mark all read</button></form>'
    ).render(Context({'request': request, 'csrf_token': 'x' * 32}))
    assert 'name="next" value="/prefs/"' in form

    client.get(reverse('sitemessage_inbox'))  # sets the CSRF cookie, as any page with a form does
    token = client.cookies['csrftoken'].value
    response = client.post(
        reverse('sitemessage_inbox_mark_all_read'), {'next': '/prefs/', 'csrfmiddlewaretoken': token}
    )

    assert response['Location'] == '/prefs/'
    assert Dispatch.objects.inbox_unread_count(ann) == 0


def test_feed_queries_do_not_grow_with_the_items(ann, settings):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    settings.SITEMESSAGE_INBOX_PAGE_SIZE = 50
    client = client_for(ann)

    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            for url in (reverse('sitemessage_inbox'), reverse('sitemessage_inbox_json')):
                assert client.get(url).status_code == 200
        return len(captured)

    deliver('one', ann)
    few = queries()
    for number in range(30):
        deliver(f'item {number}', ann)
    assert queries() == few

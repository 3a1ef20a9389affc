"""What a person sees around an unsubscribe link: the word that it worked, and pages a project can override."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from django.contrib.messages import get_messages
from django.test import Client, override_settings

from sitemessage.links import CONFIRMED_FIELD
from sitemessage.models import Subscription
from sitemessage.toolbox import recipients, register_message_types, schedule_messages
from tests.settings import MIDDLEWARE, TEMPLATES
from tests.testapp.sitemessages import GreetingMessage

pytestmark = pytest.mark.django_db

WITHOUT_MESSAGES = [name for name in MIDDLEWARE if 'MessageMiddleware' not in name]


def link(message_type=GreetingMessage, to='ann'):
    Subscription.create(to, message_type.get_alias(), 'fake')
    message, dispatches = schedule_messages(message_type({'name': 'Ann'}), recipients('fake', to))[0]
    return urlsplit(message_type.get_unsubscribe_directive(message, dispatches[0])).path


def test_with_the_messages_framework_the_next_page_says_it_worked(client):
    response = client.post(link(), {CONFIRMED_FIELD: '1'})

    assert (response.status_code, response['Location']) == (302, '/')
    assert [str(m) for m in get_messages(response.wsgi_request)] == ['You will no longer receive “Greetings” messages.']
    assert not Subscription.objects.exists()


@override_settings(MIDDLEWARE=WITHOUT_MESSAGES)
def test_without_the_messages_framework_a_confirmed_unsubscribe_shows_the_done_page(client):
    response = client.post(link(), {CONFIRMED_FIELD: '1'})

    assert response.status_code == 200
    assert [t.name for t in response.templates] == ['sitemessage/unsubscribe_done.html']
    assert 'You will no longer receive “Greetings” messages.' in response.content.decode()
    assert not Subscription.objects.exists()


@override_settings(MIDDLEWARE=WITHOUT_MESSAGES)
def test_a_mail_clients_one_click_post_is_still_redirected():
    response = Client(enforce_csrf_checks=True).post(
        link(), 'List-Unsubscribe=One-Click', content_type='application/x-www-form-urlencoded'
    )
    assert (response.status_code, response['Location']) == (302, '/')


def test_the_confirmation_form_marks_its_post_as_confirmed(client):
    page = client.get(link()).content.decode()
    assert f'name="{CONFIRMED_FIELD}" value="1"' in page and 'lang="en' in page


def test_a_hostile_type_title_is_escaped_on_every_page(client):
    class Shady(GreetingMessage):
        alias = 'shady'
        title = '<script>alert(1)</script>'

    register_message_types(Shady)
    path = link(Shady)
    with override_settings(MIDDLEWARE=WITHOUT_MESSAGES):
        pages = [client.get(path).content.decode(), client.post(path, {CONFIRMED_FIELD: '1'}).content.decode()]
    for page in pages:
        assert '<script>' not in page and '&lt;script&gt;' in page


@pytest.fixture
def overriding_templates(tmp_path):
    folder = tmp_path / 'sitemessage'
    folder.mkdir()
    for name in ('unsubscribe_confirm', 'unsubscribe_done', 'link_invalid'):
        (folder / f'{name}.html').write_text(f'PROJECT {name} {{{{ message_type_title|default:"" }}}}')
    with override_settings(TEMPLATES=[{**TEMPLATES[0], 'DIRS': [str(tmp_path)]}], MIDDLEWARE=WITHOUT_MESSAGES):
        yield


def test_a_project_overrides_each_page(client, overriding_templates):
    path = link()

    assert client.get(path).content.decode() == 'PROJECT unsubscribe_confirm Greetings'
    assert client.post(path, {CONFIRMED_FIELD: '1'}).content.decode() == 'PROJECT unsubscribe_done Greetings'
    invalid = client.post(path[:-3] + 'xyz/')
    assert (invalid.status_code, invalid.content.decode()) == (400, 'PROJECT link_invalid ')

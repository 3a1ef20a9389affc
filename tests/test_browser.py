"""In a real browser: a user ticks a box on the preferences page and saves; staff see the dispatch list.

Headless Chromium (Debian's ``chromium`` package) driven by Playwright, against pytest-django's live
server. Skipped only where Chromium or Playwright is not installed. Also writes the screenshots used by
the docs (``docs/_static/preferences.png`` and ``admin-dispatches.png``) when ``SITEMESSAGE_DOCS_SCREENSHOTS=1``.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from django.utils import timezone

from sitemessage import utils
from sitemessage.messages.base import MessageBase
from sitemessage.models import Dispatch, DispatchError, Subscription, Suppression
from sitemessage.toolbox import recipients, register_message_types, register_messenger_objects, schedule_messages
from tests.fakes import FakeMessenger

CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
]
# The docs' screenshots are rewritten only on request (SITEMESSAGE_DOCS_SCREENSHOTS=1), so a test run
# leaves the work tree clean; otherwise they go to a temporary folder and are still taken (and checked).
SCREENSHOTS = (
    Path(__file__).resolve().parent.parent / 'docs' / '_static'
    if os.environ.get('SITEMESSAGE_DOCS_SCREENSHOTS') == '1'
    else Path(tempfile.gettempdir()) / 'sitemessage-screenshots'
)

if not os.path.exists(CHROMIUM):
    pytest.skip(f'{CHROMIUM} is not installed (Debian package `chromium`)', allow_module_level=True)
sync_api = pytest.importorskip('playwright.sync_api', reason='Playwright for Python is not installed')

pytestmark = pytest.mark.django_db(transaction=True)


class SMSMessenger(FakeMessenger):
    alias = 'sms'
    title = 'SMS'


class CommentReply(MessageBase):
    alias = 'comment_reply'
    title = 'Replies to my comments'


class WeeklyDigest(MessageBase):
    alias = 'weekly_digest'
    title = 'Weekly digest'
    supported_messengers = ['smtp']


class SecurityAlert(MessageBase):
    alias = 'security_alert'
    title = 'Security alerts'
    allow_user_subscription = False


@pytest.fixture
def site_registry(smtp_messenger):
    """What a small site registers: e-mail and SMS, three message types (one not open to subscription)."""
    for alias in ('greeting', 'plain', 'email_plain', 'email_html'):
        utils._MESSAGES_REGISTRY.pop(alias, None)
    utils._MESSENGERS_REGISTRY.pop('fake', None)
    register_messenger_objects(SMSMessenger())
    register_message_types(CommentReply, WeeklyDigest, SecurityAlert)


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API keeps an asyncio loop in this thread; Django would then refuse ORM calls from
    # the test itself. No Django code runs on that loop (the live server has its own thread).
    monkeypatch.setenv('DJANGO_ALLOW_ASYNC_UNSAFE', 'true')
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
            # Database connections opened while Playwright's loop ran belong to its context: close them here,
            # or PostgreSQL refuses to drop the test database at the end.
            connections.close_all()


def logged_in_page(browser, live_server, user, width, height):
    """A browser page carrying the session of ``user`` (made by the test client, stored in the database)."""
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={'width': width, 'height': height})
    context.add_cookies(
        [
            {
                'name': settings.SESSION_COOKIE_NAME,
                'url': live_server.url,
                'value': client.cookies[settings.SESSION_COOKIE_NAME].value,
            }
        ]
    )
    return context.new_page()


def test_user_ticks_a_box_saves_and_is_subscribed(site_registry, browser, live_server, django_user_model):
    user = django_user_model.objects.create_user('ann', email='ann@example.com')
    Subscription.create(user, 'weekly_digest', 'smtp')
    page = logged_in_page(browser, live_server, user, 640, 320)

    page.goto(f'{live_server.url}/prefs/')
    box = page.locator('input[name="sm_user_pref"][value="comment_reply|sms"]')
    assert not box.is_checked()
    assert page.locator('input[name="sm_user_pref"][value="weekly_digest|smtp"]').is_checked()
    assert page.locator('input[name="sm_user_pref"][value^="security_alert|"]').count() == 0
    box.check()
    with page.expect_navigation():
        page.click('input[type="submit"]')

    assert sorted(Subscription.objects.filter(recipient=user).values_list('message_cls', 'messenger_cls')) == [
        ('comment_reply', 'sms'),
        ('weekly_digest', 'smtp'),
    ]
    assert page.locator('input[name="sm_user_pref"][value="comment_reply|sms"]').is_checked()

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / 'preferences.png'), full_page=True)


def test_admin_dispatch_list_screenshot(site_registry, browser, live_server, django_user_model):
    admin = django_user_model.objects.create_superuser('admin', email='admin@example.com')
    bob = django_user_model.objects.create_user('bob', email='bob@example.com')
    now = timezone.now()
    schedule_messages(CommentReply({'text': 'Bob replied'}), recipients('smtp', ['ann@example.com', bob]))
    schedule_messages(
        WeeklyDigest({'text': 'Digest'}),
        recipients('smtp', ['carol@example.com', 'dave@example.com', 'erin@example.com']),
    )
    schedule_messages(CommentReply({'text': 'Carol replied'}), recipients('sms', ['+15550100', '+15550111']))
    outcomes = {
        'ann@example.com': (Dispatch.DISPATCH_STATUS_SENT, 0, now - timedelta(minutes=42)),
        'bob@example.com': (Dispatch.DISPATCH_STATUS_SENT, 0, now - timedelta(minutes=41)),
        'carol@example.com': (Dispatch.DISPATCH_STATUS_ERROR, 2, now - timedelta(minutes=5)),
        'dave@example.com': (Dispatch.DISPATCH_STATUS_FAILED, 10, now - timedelta(minutes=3)),
        'erin@example.com': (Dispatch.DISPATCH_STATUS_PROCESSING, 0, None),
        '+15550100': (Dispatch.DISPATCH_STATUS_SENT, 0, now - timedelta(minutes=1)),
    }
    for address, (status, retries, dispatched) in outcomes.items():
        Dispatch.objects.filter(address=address).update(
            dispatch_status=status, retry_count=retries, time_dispatched=dispatched
        )
    DispatchError.objects.create(
        dispatch=Dispatch.objects.get(address='dave@example.com'),
        error_log='550 5.1.1 <dave@example.com>: Recipient address rejected',
    )
    page = logged_in_page(browser, live_server, admin, 1280, 560)

    page.goto(f'{live_server.url}/admin/sitemessage/dispatch/')
    page.click('#toggle-nav-sidebar')  # more room for the list

    assert page.locator('#result_list tbody tr').count() == 7
    assert page.locator('#changelist-filter').is_visible()
    assert page.locator('#result_list').inner_text().count('Failed') == 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / 'admin-dispatches.png'), full_page=True)


def busy_admin_data(django_user_model):
    """Lists as an operator sees them: long addresses and subjects, long SMTP errors, every status."""
    from sitemessage.messages.email import EmailHtmlMessage

    users = [
        django_user_model.objects.create_user(
            f'customer.with.a.long.name{i}', email=f'customer.with.a.long.name{i}@subdomain.example.com'
        )
        for i in range(3)
    ]
    long_address = 'a.very.long.mailbox.name.that.goes.on.and.on@mail.some-long-subdomain.example.com'
    schedule_messages(
        EmailHtmlMessage('Your weekly digest: 42 new replies to the discussions you follow, and more', '<p>Digest</p>'),
        recipients('smtp', [long_address, *users]),
    )
    schedule_messages(CommentReply({'text': 'Carol replied'}), recipients('sms', ['+15550100', '+15550111']))
    statuses = [
        Dispatch.DISPATCH_STATUS_SENT,
        Dispatch.DISPATCH_STATUS_ERROR,
        Dispatch.DISPATCH_STATUS_FAILED,
        Dispatch.DISPATCH_STATUS_PROCESSING,
        Dispatch.DISPATCH_STATUS_PENDING,
    ]
    for i, dispatch in enumerate(Dispatch.objects.order_by('pk')):
        Dispatch.objects.filter(pk=dispatch.pk).update(
            dispatch_status=statuses[i % 5], retry_count=i, time_dispatched=timezone.now()
        )
        DispatchError.objects.create(
            dispatch=dispatch,
            error_log=(
                f'SMTP Error: (550, b"5.1.1 <{dispatch.address}>: Recipient address rejected: User unknown in '
                f'virtual mailbox table; see https://support.example.com/smtp/errors/550-5.1.1?code=abcdefghijkl")'
            ),
        )
        Subscription.create(users[i % 3], 'comment_reply', 'sms')
    Subscription.create(long_address, 'weekly_digest', 'smtp')
    for i, reason in enumerate(('bounce', 'complaint', 'manual')):
        Suppression.objects.create(
            messenger='smtp',
            address=f'{i}{long_address}',
            reason=reason,
            note=f'Postmark bounced: smtp;550 5.1.1 <{long_address}>: Recipient address rejected: User unknown',
        )


@pytest.mark.parametrize('model', ['message', 'dispatch', 'dispatcherror', 'subscription', 'suppression'])
def test_every_admin_list_fits_1280_pixels(site_registry, browser, live_server, django_user_model, model):
    """At 1280 px, with the navigation sidebar open, no column of a list is cut off or scrolled away."""
    admin = django_user_model.objects.create_superuser('admin', email='admin@example.com')
    busy_admin_data(django_user_model)
    page = logged_in_page(browser, live_server, admin, 1280, 800)

    page.goto(f'{live_server.url}/admin/sitemessage/{model}/')

    assert page.locator('#nav-sidebar').is_visible()  # the default: the sidebar takes its room
    assert page.locator('#result_list tbody tr').count() >= 2
    sizes = page.evaluate("""() => {
        const table = document.querySelector('#result_list');
        const box = table.closest('.results');
        return {table: table.scrollWidth, box: box.clientWidth, right: table.getBoundingClientRect().right,
                viewport: document.documentElement.clientWidth, page: document.documentElement.scrollWidth};
    }""")
    assert sizes['table'] <= sizes['box'], sizes  # nothing hidden behind the list's own scroll bar
    assert sizes['right'] <= sizes['viewport'] and sizes['page'] <= sizes['viewport'], sizes


def test_preview_shows_html_mail_in_a_sandbox_where_its_scripts_do_not_run(
    site_registry, browser, live_server, django_user_model
):
    from sitemessage.messages.email import EmailHtmlMessage
    from sitemessage.models import Message

    register_message_types(EmailHtmlMessage)  # site_registry leaves the built-in types out
    admin = django_user_model.objects.create_superuser('admin', email='admin@example.com')
    schedule_messages(
        EmailHtmlMessage(
            '<script>document.title="subject ran"</script> News',
            (
                '<h1 id="greeting">Hello</h1>'
                '<script>document.body.setAttribute("data-ran", "yes"); parent.document.title = "pwned";</script>'
                '<img src="x" onerror="parent.document.title = \'pwned by onerror\'">'
            ),
        ),
        recipients('smtp', 'ann@example.com'),
    )
    page = logged_in_page(browser, live_server, admin, 1280, 800)

    page.goto(f'{live_server.url}/admin/sitemessage/message/{Message.objects.get().pk}/preview/')

    iframe = page.locator('iframe.sitemessage-html')
    assert iframe.get_attribute('sandbox') == ''
    assert '<h1 id="greeting">Hello</h1>' in iframe.get_attribute('srcdoc')  # the HTML, as the browser has it
    assert iframe.bounding_box()['height'] > 300
    (frame,) = [f for f in page.frames if f.url == 'about:srcdoc']  # rendered in its own document
    page.wait_for_timeout(500)  # give a script, had it been allowed, time to run
    # Without the sandbox the srcdoc document is same-origin and its scripts would retitle this page.
    assert 'pwned' not in page.title() and 'ran' not in page.title()
    assert page.locator('.sitemessage-subject').inner_text().startswith('<script>')  # shown as text

"""In a real browser: a user opens their inbox, reads an item, sees the unread count drop; polling shows new items.

Headless Chromium through Playwright, as tests/test_browser.py (whose fixtures this reuses).
"""

from __future__ import annotations

import pytest

from sitemessage.models import Dispatch
from tests.inbox_helpers import deliver
from tests.test_browser import SCREENSHOTS, browser, logged_in_page  # noqa: F401  (browser is a fixture)

pytest_plugins = ['tests.inbox_fixtures']  # fixtures: inbox, ann, bob
pytestmark = pytest.mark.django_db(transaction=True)


def test_user_reads_an_item_and_the_unread_count_drops(browser, live_server, ann):  # noqa: F811  (browser: an imported fixture)
    deliver('Your order #1042 has shipped.\nIt arrives on Friday.', ann)
    deliver('Bob replied to your comment: <b>thanks!</b>', ann)
    deliver('Welcome to the site!', ann)
    page = logged_in_page(browser, live_server, ann, 800, 640)

    page.goto(f'{live_server.url}/messages/inbox/')
    unread = page.locator('[data-sitemessage-inbox-unread]')
    items = page.locator('.sitemessage-inbox-item')
    assert unread.inner_text() == '3'
    assert items.count() == 3
    assert page.locator('.sitemessage-inbox-item.is-unread').count() == 3
    assert 'Bob replied to your comment: <b>thanks!</b>' in items.nth(1).inner_text()  # shown as text
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / 'inbox.png'), full_page=True)

    items.nth(1).get_by_role('button', name='Mark read').click()

    page.wait_for_function("document.querySelector('[data-sitemessage-inbox-unread]').textContent === '2'")
    assert page.locator('.sitemessage-inbox-item.is-unread').count() == 2
    assert Dispatch.objects.inbox_unread_count(ann) == 2
    read = Dispatch.objects.get(read_status=Dispatch.READ_STATUS_READ)
    assert 'Bob replied' in str(read.message_cache)

    page.get_by_role('button', name='Mark all read').click()
    page.wait_for_function("document.querySelector('[data-sitemessage-inbox-unread]').textContent === '0'")
    assert Dispatch.objects.inbox_unread_count(ann) == 0

    items.first.get_by_role('button', name='Archive').click()
    page.wait_for_function("document.querySelectorAll('.sitemessage-inbox-item').length === 2")
    page.reload()
    assert page.locator('.sitemessage-inbox-item').count() == 2


def test_polling_updates_the_count_and_offers_new_items(browser, live_server, ann, settings):  # noqa: F811  (browser: an imported fixture)
    settings.SITEMESSAGE_INBOX_POLL_SECONDS = 0.2
    deliver('First', ann)
    page = logged_in_page(browser, live_server, ann, 800, 480)
    page.goto(f'{live_server.url}/messages/inbox/')
    assert page.locator('[data-sitemessage-inbox-unread]').inner_text() == '1'
    assert page.locator('[data-sitemessage-inbox-new]').is_hidden()

    deliver('Second', ann)

    page.wait_for_function("document.querySelector('[data-sitemessage-inbox-unread]').textContent === '2'")
    page.locator('[data-sitemessage-inbox-new]').wait_for(state='visible')
    page.locator('[data-sitemessage-inbox-new] a').click()
    page.wait_for_load_state()
    assert page.locator('.sitemessage-inbox-item').count() == 2

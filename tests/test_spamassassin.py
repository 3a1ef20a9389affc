"""The e-mails of the built-in types, as a real SMTP server receives them, through SpamAssassin's local tests.

``spamassassin -L -t`` (Debian package ``spamassassin``; the rules shipped with the package, no
``sa-update``, no network) scores each e-mail; no structural rule may fire. Skipped when
SpamAssassin is missing, a failure under ``SITEMESSAGE_TEST_STRICT=1`` (see tests/conftest.py).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from email import message_from_bytes, policy

import pytest
from django.core.mail import EmailMessage
from django.test import override_settings

from sitemessage.backends import EmailBackend
from sitemessage.messages.email import EmailHtmlMessage, EmailTextMessage
from sitemessage.models import Subscription
from sitemessage.sending import send_scheduled_messages
from sitemessage.toolbox import get_sitemessage_urls, recipients, schedule_messages

pytestmark = pytest.mark.django_db

urlpatterns = get_sitemessage_urls()  # this module is the URLconf of the tests (no admin, no project views)

# Rules about the structure of an e-mail: what a well-built message never triggers.
STRUCTURAL = re.compile(r'^(MISSING_.*|MIME_.*|MPART_ALT_DIFF.*|INVALID_DATE|LIST_PARTIAL_.*|HTML_IMAGE_ONLY_.*)$')

NEWS_HTML = (
    '<p>Hello Ann,</p><p>Our <b>spring catalogue</b> is out. It lists the new garden tools, the seeds '
    'of the season and a few books about growing vegetables in small city gardens.</p>'
    '<p>Thank you for reading, and see you soon.</p>'
)
NEWS_TEXT = (
    'Hello Ann,\n\nOur spring catalogue is out. It lists the new garden tools, the seeds of the season '
    'and a few books about growing vegetables in small city gardens.\n\nThank you for reading, and see '
    'you soon.\n'
)


BADLY_BUILT = (
    b'From: robot@example.com\r\nTo: ann@example.com\r\nSubject: Hi\r\nMIME-Version: 1.0\r\n'
    b'Content-Type: text/html; charset="us-ascii"\r\n\r\n'
    b'<html><body><img src="https://shop.example.com/x.png"></body></html>\r\n'
)


def spamassassin_rules(mails: list, directory) -> list:
    """Return the rules SpamAssassin's local tests fire on each e-mail (one process for all: it starts slowly)."""
    paths = []
    for number, mail in enumerate(mails):
        paths.append(directory / f'{number}.eml')
        paths[-1].write_bytes(mail)
    result = subprocess.run(['spamassassin', '-L', '-t', *map(str, paths)], capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode(errors='replace')
    statuses = re.findall(r'^X-Spam-Status: (.*(?:\r?\n[ \t].*)*)', result.stdout.decode(errors='replace'), re.M)
    assert len(statuses) == len(mails), result.stdout[:3000]
    fired = []
    for status in statuses:
        tests = re.search(r'tests=(.*?)(?:\s+autolearn=|\s+version=|$)', ' '.join(status.split()))
        fired.append({name for name in re.split(r'[,\s]+', tests.group(1)) if name and name != 'none'})
    return fired


@pytest.fixture
def spamassassin(tmp_path):
    if shutil.which('spamassassin') is None:
        pytest.skip('spamassassin is not installed (Debian package spamassassin)')
    return lambda mails: spamassassin_rules(mails, tmp_path)


@pytest.fixture
def subscriber(django_user_model):
    """A user subscribed to both e-mail types (so unsubscribe links have an effect)."""
    user = django_user_model.objects.create_user('ann', email='ann@example.com')
    for alias in ('email_plain', 'email_html'):
        Subscription.create(user, alias, 'smtp')
    return user


def schedule_the_built_in_emails(user):
    """The e-mails of each built-in type: plain and templated, to a subscriber and to explicit addresses."""
    to_user, to_address = recipients('smtp', user), recipients('smtp', 'bob@example.com')
    schedule_messages(EmailTextMessage('Spring catalogue (plain)', NEWS_TEXT), to_user)
    schedule_messages(
        EmailTextMessage(
            'Spring catalogue (plain, template)', {'contents': NEWS_TEXT, 'footer': 'The garden shop team'}
        ),
        to_user,
    )
    schedule_messages(EmailHtmlMessage('Spring catalogue (html)', NEWS_HTML), to_user)
    schedule_messages(
        EmailHtmlMessage(
            'Spring catalogue (html, template)', {'contents': NEWS_HTML, 'footer': 'The garden shop team'}
        ),
        to_user,
    )
    schedule_messages(
        EmailHtmlMessage('Your order (html, template, explicit recipient)', {'contents': NEWS_HTML}), to_address
    )


def run_all(spamassassin, mails) -> dict:
    """Score every e-mail and return ``{subject: fired rules}``."""
    return dict(zip([subject for subject, _mail in mails], spamassassin([mail for _subject, mail in mails])))


def received(smtp_server):
    return [
        (str(message_from_bytes(envelope.content, policy=policy.default)['Subject']), envelope.content)
        for envelope in smtp_server.handler.envelopes
    ]


def structural(fired: dict) -> dict:
    return {
        subject: sorted(rule for rule in rules if STRUCTURAL.match(rule))
        for subject, rules in fired.items()
        if any(STRUCTURAL.match(rule) for rule in rules)
    }


@override_settings(ROOT_URLCONF=__name__, SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_the_built_in_emails_with_unsubscribe_links_fire_no_structural_rule(
    spamassassin, smtp_server, smtp_messenger, subscriber
):
    schedule_the_built_in_emails(subscriber)
    EmailBackend().send_messages(
        [
            EmailMessage(  # what send_mail() hands the EMAIL_BACKEND
                'Reset your password',
                'Follow the link below to choose a new password.\n',
                'robot@example.com',
                ['carol@example.com'],
            )
        ]
    )
    send_scheduled_messages()
    mails = received(smtp_server)
    assert len(mails) == 6

    fired = run_all(spamassassin, mails + [('control', BADLY_BUILT)])

    # The check can fail: the control e-mail (no Date, no Message-ID, HTML only, a lone image) is caught.
    control = structural(fired).pop('control')
    assert {'MISSING_DATE', 'MISSING_MID', 'MIME_HTML_ONLY'} <= set(control)
    assert structural(fired) == {'control': control}
    # What the e-mails carry, for the record: the list headers of a subscription, one click only there.
    headers = {subject: message_from_bytes(mail, policy=policy.default) for subject, mail in mails}
    assert headers['Spring catalogue (html, template)']['List-Unsubscribe-Post'] == 'List-Unsubscribe=One-Click'
    assert headers['Spring catalogue (html, template)']['List-Id'] == 'Email notification <email_html.shop.example.com>'
    assert headers['Your order (html, template, explicit recipient)']['List-Unsubscribe-Post'] is None
    assert headers['Reset your password']['List-Unsubscribe-Post'] is None


@override_settings(ROOT_URLCONF='tests.test_spamassassin_no_urls', SITEMESSAGE_SITE_URL='https://shop.example.com')
def test_the_built_in_emails_without_unsubscribe_links_fire_no_structural_rule(
    spamassassin, smtp_server, smtp_messenger, subscriber
):
    schedule_the_built_in_emails(subscriber)
    send_scheduled_messages()
    mails = received(smtp_server)
    assert len(mails) == 5
    assert all(b'List-Unsubscribe' not in mail for _subject, mail in mails)

    fired = run_all(spamassassin, mails)

    assert structural(fired) == {}

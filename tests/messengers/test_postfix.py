"""SMTPMessenger against a real Postfix on loopback (tests/postfix.py): refusals, pipelining, SMTPUTF8.

Postfix refuses some e-mails after their content (``smtpd_end_of_data_restrictions``) and keeps
the transaction open until RSET: the next pipelined MAIL gets ``503 nested MAIL command`` while
its RCPT joins the old transaction. Every good e-mail must still arrive exactly once, each refusal
must be recorded against its own dispatch, and nothing empty may be delivered.
"""

from __future__ import annotations

import pytest
from django.test.utils import override_settings

from sitemessage.messengers.smtp import SMTPMessenger
from sitemessage.models import Dispatch, DispatchError
from sitemessage.sending import send_scheduled_messages
from sitemessage.shortcuts import schedule_email
from sitemessage.toolbox import register_messenger_objects
from tests.postfix import DOMAIN, IDN_DOMAIN, UNKNOWN_USER, Postfix, why_postfix_cannot_run

pytestmark = pytest.mark.django_db

SENT = Dispatch.DISPATCH_STATUS_SENT
ERROR = Dispatch.DISPATCH_STATUS_ERROR
FAILED = Dispatch.DISPATCH_STATUS_FAILED

GOOD = [f'good{number}@{DOMAIN}' for number in range(40)]
UTF8_USER = f'jürgen@{DOMAIN}'
IDN_USER = f'leser@{IDN_DOMAIN}'
# address -> (status, code in its error log); refused at RCPT (450, 550) or after the content (554, 451)
REFUSED = {
    f'spam@{DOMAIN}': (FAILED, '554'),
    f'spam2@{DOMAIN}': (FAILED, '554'),
    f'later@{DOMAIN}': (ERROR, '451'),
    UNKNOWN_USER: (FAILED, '550'),
    f'busy@{DOMAIN}': (ERROR, '450'),
}


@pytest.fixture(scope='session')
def postfix():
    reason = why_postfix_cannot_run()
    if reason:
        pytest.skip(reason)  # fails the run under SITEMESSAGE_TEST_STRICT=1 (tests/conftest.py)
    mailboxes = GOOD + [UTF8_USER, IDN_USER] + [address for address in REFUSED if address != UNKNOWN_USER]
    server = Postfix(mailboxes).start()
    yield server
    server.stop()


@pytest.fixture
def mailboxes(postfix):
    postfix.clear()
    return postfix


def use_postfix(postfix, **options):
    messenger = SMTPMessenger('robot@example.com', host=postfix.host, port=postfix.port, timeout=10, **options)
    register_messenger_objects(messenger)
    return messenger


def interleaved():
    """Good addresses with each refused one placed right before a good one (the case that broke)."""
    refused = list(REFUSED)
    order = []
    for number, address in enumerate(GOOD):
        order.append(address)
        if number % 7 == 3 and refused:
            order.append(refused.pop(0))
    return order + refused + [GOOD[0].replace('good0', 'spam')]  # a refusal last: nothing follows it


@pytest.mark.parametrize('pipelining, connections', [(True, 1), (False, 1), (True, 4)])
def test_every_good_email_arrives_once_and_each_refusal_is_its_own(mailboxes, pipelining, connections):
    use_postfix(mailboxes, pipelining=pipelining, connections=connections)
    order = interleaved()
    for address in order:
        schedule_email(f'Body for {address}\n', address, subject=f'Subject for {address}')

    with override_settings(SITEMESSAGE_SEND_BATCH_SIZE=16):
        report = send_scheduled_messages()

    assert report.sent == len(GOOD)
    for address, (status, code) in REFUSED.items():
        dispatches = Dispatch.objects.filter(address=address)
        for dispatch in dispatches:
            assert dispatch.dispatch_status == status, address
            errors = list(DispatchError.objects.filter(dispatch=dispatch).values_list('error_log', flat=True))
            assert len(errors) == 1 and code in errors[0], (address, errors)
            assert '503' not in errors[0]
        if status == ERROR:
            assert [dispatch.retry_count for dispatch in dispatches] == [1] * len(dispatches)
    assert set(Dispatch.objects.filter(address__in=GOOD).values_list('dispatch_status', flat=True)) == {SENT}

    delivered_count = mailboxes.wait_until_idle(len(GOOD))
    delivered = mailboxes.delivered()
    assert delivered_count == len(GOOD)  # nothing else: no empty e-mail, no duplicate, no refused one
    assert sorted(delivered) == sorted(GOOD)
    for address, messages in delivered.items():
        [message] = messages
        assert message['Subject'] == f'Subject for {address}'
        assert message['To'] == address
        assert message.get_content().strip() == f'Body for {address}'
        assert message['Message-ID']


@pytest.mark.parametrize('pipelining', [True, False])
def test_international_addresses_reach_postfix(mailboxes, pipelining):
    use_postfix(mailboxes, pipelining=pipelining)
    schedule_email('Grüße\n', UTF8_USER, subject='Für Jürgen')
    schedule_email('Hallo\n', 'Leser <leser@bücher.example>', subject='IDN')
    schedule_email('After them\n', GOOD[1], subject='Plain')

    report = send_scheduled_messages()

    assert report.sent == 3
    mailboxes.wait_until_idle(3)
    delivered = mailboxes.delivered()
    assert sorted(delivered) == sorted([UTF8_USER, IDN_USER, GOOD[1]])
    [utf8] = delivered[UTF8_USER]
    assert utf8['To'] == UTF8_USER and utf8['Subject'] == 'Für Jürgen'
    [idn] = delivered[IDN_USER]
    assert idn['To'] == f'Leser <{IDN_USER}>'
    assert idn.get_content().strip() == 'Hallo'

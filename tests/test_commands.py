"""The management commands: their exact output (SPEC 7.10), errors and exit status."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.test.utils import override_settings
from django.utils import timezone

from sitemessage.messages.email import EmailTextMessage
from sitemessage.models import Dispatch, Message
from sitemessage.toolbox import Recipient, recipients, schedule_messages

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = re.compile(r'^Sent: (\d+), errors: (\d+), failed: (\d+), seconds: \d+\.\d\d$')


def run(command, *args, **options):
    """Run a command; return its stdout and stderr lines."""
    out, err = StringIO(), StringIO()
    call_command(command, *args, stdout=out, stderr=err, **options)
    return out.getvalue().splitlines(), err.getvalue()


def schedule(text, address, priority=None):
    message, dispatches = schedule_messages(text, recipients('fake', address), priority=priority)[0]
    return message


def sent_message(text, address):
    message = schedule(text, address)
    message.dispatch_set.update(dispatch_status=Dispatch.DISPATCH_STATUS_SENT)
    return message


# sitemessage_send_scheduled ----------------------------------------------------------------------

def test_send_scheduled_prints_the_documented_lines_and_a_summary(fake_messenger):
    schedule('hello', 'a')
    fake_messenger.fail_addresses = {'b': 'try later'}
    schedule('hello', 'b')

    lines, errors = run('sitemessage_send_scheduled')

    assert lines[:2] == ['Sending scheduled messages  ...', 'Sending done.']
    assert len(lines) == 3
    assert SUMMARY.match(lines[2]).groups() == ('1', '1', '0')
    assert errors == ''
    assert fake_messenger.delivered == [('a', 'hello')]


@pytest.mark.parametrize('priority', [['--priority', '10'], ['--priority=10']])
def test_send_scheduled_with_priority_sends_only_that_priority(fake_messenger, priority):
    schedule('urgent', 'urgent', priority=10)
    schedule('normal', 'normal')

    lines, _errors = run('sitemessage_send_scheduled', *priority)

    assert lines[:2] == ['Sending scheduled messages with priority 10  ...', 'Sending done.']
    assert SUMMARY.match(lines[2]).groups() == ('1', '0', '0')
    assert fake_messenger.delivered == [('urgent', 'urgent')]


def test_send_scheduled_bad_priority_is_a_usage_error(fake_messenger):
    schedule('normal', 'normal')

    with pytest.raises(CommandError, match='abc'):
        run('sitemessage_send_scheduled', '--priority', 'abc')

    assert fake_messenger.delivered == []


def test_send_scheduled_bad_priority_given_as_option_reports_the_error(fake_messenger):
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_send_scheduled', priority='abc', stdout=out, stderr=err)

    assert err.getvalue().startswith("Error on send: Priority must be a whole number, got 'abc'.\n")


def test_send_scheduled_failure_is_reported_on_stderr_and_raises(fake_messenger):
    Message.create('plain', {'stext_': 'x', 'use_tpl': False}, recipients=Recipient('ghost', None, 'a'))

    out, err = StringIO(), StringIO()
    with pytest.raises(CommandError) as error:
        call_command('sitemessage_send_scheduled', stdout=out, stderr=err)

    assert error.value.returncode == 1
    assert err.getvalue().startswith('Error on send: `ghost` messenger is not registered')
    assert 'Traceback' in err.getvalue()


# sitemessage_cleanup -----------------------------------------------------------------------------

def test_cleanup_removes_sent_dispatches_and_their_messages():
    sent = sent_message('old', 'a')
    pending = schedule('waiting', 'b')

    lines, _errors = run('sitemessage_cleanup')

    assert lines == ['Cleaning up dispatches and messages ...', 'Cleanup done.']
    assert not Message.objects.filter(pk=sent.pk).exists()
    assert Message.objects.filter(pk=pending.pk).exists()
    assert pending.dispatch_set.count() == 1


def test_cleanup_dispatches_only_from_the_command_line_keeps_messages():
    sent = sent_message('old', 'a')

    lines, _errors = run('sitemessage_cleanup', '--dispatches_only')

    assert lines == ['Cleaning up dispatches  ...', 'Cleanup done.']
    assert Message.objects.filter(pk=sent.pk).exists()
    assert not Dispatch.objects.exists()


def test_cleanup_dispatches_only_as_an_option_keeps_messages():
    sent = sent_message('old', 'a')

    lines, _errors = run('sitemessage_cleanup', dispatches_only=True)

    assert lines == ['Cleaning up dispatches  ...', 'Cleanup done.']
    assert Message.objects.filter(pk=sent.pk).exists()


def test_cleanup_ago_keeps_recent_dispatches():
    old = sent_message('old', 'old')
    recent = sent_message('recent', 'recent')
    old.dispatch_set.update(time_dispatched=timezone.now() - timedelta(days=6))
    recent.dispatch_set.update(time_dispatched=timezone.now() - timedelta(days=1))

    lines, _errors = run('sitemessage_cleanup', '--ago', '5')

    assert lines == ['Cleaning up dispatches and messages sent 5 days ago ...', 'Cleanup done.']
    assert list(Dispatch.objects.values_list('address', flat=True)) == ['recent']
    assert not Message.objects.filter(pk=old.pk).exists()

    lines, _errors = run('sitemessage_cleanup', '--ago', '3', '--dispatches_only')
    assert lines == ['Cleaning up dispatches sent 3 days ago ...', 'Cleanup done.']


# sitemessage_probe -------------------------------------------------------------------------------

def test_probe_prints_the_messenger_result(fake_messenger):
    lines, errors = run('sitemessage_probe', 'fake', '--to', 'x')

    assert lines == ['Sending test message using fake ...', 'Probing function result: delivered to x.',
                     'Probing done.']
    assert errors == ''
    assert fake_messenger.delivered == [('x', 'Test message from sitemessages.')]


def test_probe_of_an_unknown_messenger_reports_the_error():
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'ghost', stdout=out, stderr=err)

    assert out.getvalue() == 'Sending test message using ghost ...\n'
    assert err.getvalue().startswith('Error on probe: `ghost` messenger is not registered')


def test_probe_failure_of_the_messenger_reaches_the_output(fake_messenger):
    fake_messenger.warmup_error = 'cannot connect'
    out, err = StringIO(), StringIO()

    with pytest.raises(CommandError):
        call_command('sitemessage_probe', 'fake', '--to', 'x', stdout=out, stderr=err)

    assert err.getvalue().startswith('Error on probe: cannot connect')
    assert 'Probing function result' not in out.getvalue()


# sitemessage_check_undelivered -------------------------------------------------------------------

def failed_dispatch():
    message = schedule('lost', 'lost')
    message.dispatch_set.update(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED)


def test_check_undelivered_with_nothing_failed():
    lines, _errors = run('sitemessage_check_undelivered')

    assert lines == ['Checking for undelivered dispatches ...', 'Undelivered dispatches count: 0.', 'Check done.']


@override_settings(ADMINS=[('Admin', 'admin@example.com')])
def test_check_undelivered_alerts_admins(smtp_server, smtp_messenger):
    failed_dispatch()

    lines, _errors = run('sitemessage_check_undelivered')

    assert lines == ['Checking for undelivered dispatches ...', 'Undelivered dispatches count: 1.', 'Check done.']
    [message] = smtp_server.handler.messages()
    assert message['To'] == 'admin@example.com'
    assert message['Subject'] == '[SITEMESSAGE] Undelivered dispatches'
    assert '1 undelivered dispatch' in message.get_content()


@override_settings(ADMINS=[])
def test_check_undelivered_without_admins_only_counts(smtp_server, smtp_messenger):
    failed_dispatch()

    lines, _errors = run('sitemessage_check_undelivered')

    assert lines[1] == 'Undelivered dispatches count: 1.'
    assert smtp_server.handler.envelopes == []
    assert not Message.objects.filter(cls='email_plain').exists()


@override_settings(ADMINS=[])
def test_check_undelivered_to_an_explicit_address(smtp_server, smtp_messenger):
    failed_dispatch()

    lines, _errors = run('sitemessage_check_undelivered', '--to', 'ops@example.com')

    assert lines[1] == 'Undelivered dispatches count: 1.'
    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['ops@example.com']]


# Exit status -------------------------------------------------------------------------------------

def _django(*args):
    env = {**os.environ, 'DJANGO_SETTINGS_MODULE': 'tests.settings'}
    return subprocess.run([sys.executable, '-m', 'django', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_failing_commands_exit_non_zero():
    usage = _django('sitemessage_send_scheduled', '--priority', 'abc')
    assert usage.returncode != 0
    assert 'abc' in usage.stderr

    failure = _django('sitemessage_probe', 'ghost')
    assert failure.returncode == 1
    assert 'Error on probe: `ghost` messenger is not registered' in failure.stderr


def test_check_undelivered_sends_only_its_own_alert(smtp_server, smtp_messenger, settings):
    from sitemessage.maintenance import check_undelivered
    settings.ADMINS = [('Ops', 'ops@example.com')]
    failed = schedule_messages(EmailTextMessage('broken', 'x'), recipients('smtp', 'gone@example.com'))[0]
    Dispatch.objects.filter(message=failed.message).update(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED)
    other = schedule_messages(EmailTextMessage('someone else', 'y'), recipients('smtp', 'later@example.com'),
                              priority=999)[0]

    assert check_undelivered() == 1

    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['ops@example.com']]
    assert Dispatch.objects.get(message=other.message).dispatch_status == Dispatch.DISPATCH_STATUS_PENDING

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

    lines, errors = run('sitemessage_send_scheduled', '--ok-on-errors')  # an error exits 4 without it

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

    assert error.value.returncode == 3  # could not run (1 in 2.0 before the exit statuses of issue 10)
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

    assert lines == ['Sending test message using fake ...', 'Probing function result: delivered to x.', 'Probing done.']
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
    return subprocess.run(
        [sys.executable, '-m', 'django', *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


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
    other = schedule_messages(
        EmailTextMessage('someone else', 'y'), recipients('smtp', 'later@example.com'), priority=999
    )[0]

    assert check_undelivered() == 1

    assert [env.rcpt_tos for env in smtp_server.handler.envelopes] == [['ops@example.com']]
    assert Dispatch.objects.get(message=other.message).dispatch_status == Dispatch.DISPATCH_STATUS_PENDING


# Exit statuses (docs/commands.rst): 0 done, 3 could not run, 4 dispatches errored or failed ----------


def status_of(command, *args, **options):
    """Run a command as cron would see it: (exit status, stdout lines, stderr)."""
    out, err = StringIO(), StringIO()
    try:
        call_command(command, *args, stdout=out, stderr=err, **options)
    except CommandError as error:
        return error.returncode, out.getvalue().splitlines(), f'{err.getvalue()}{error}'
    return 0, out.getvalue().splitlines(), err.getvalue()


SILENCE_SECONDS = 8  # the silent server hangs up after this: a client without a timeout fails, not hangs


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and says nothing (not an SMTP server).

    It hangs up after ``SILENCE_SECONDS``, so that a client waiting for ever shows up as a slow
    run (a failed assertion) instead of a test that never ends.
    """
    import socket
    import threading
    import time

    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(8)
    accepted, stop = [], threading.Event()
    started = time.monotonic()

    def accept():
        listener.settimeout(0.1)
        while not stop.is_set():
            if time.monotonic() - started > SILENCE_SECONDS:
                for connection in accepted:
                    connection.close()
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1], accepted
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    listener.close()


def register_smtp(**kwargs):
    from sitemessage import utils
    from sitemessage.messengers.smtp import SMTPMessenger

    messenger = SMTPMessenger('robot@example.com', host='127.0.0.1', **kwargs)
    utils.register_messenger_objects(messenger)
    return messenger


def schedule_mail(*addresses):
    for address in addresses:
        schedule_messages(EmailTextMessage('Hello', 'Text'), recipients('smtp', address))


def test_all_sent_exits_0(smtp_messenger, smtp_server):
    schedule_mail('a@example.com', 'b@example.com')

    status, lines, errors = status_of('sitemessage_send_scheduled')

    assert status == 0
    assert SUMMARY.match(lines[2]).groups() == ('2', '0', '0')
    assert len(lines) == 3 and errors == ''


def test_nothing_due_exits_0():
    assert status_of('sitemessage_send_scheduled')[0] == 0


def test_smtp_server_down_exits_3_naming_host_and_port(closed_port):
    port = closed_port
    register_smtp(port=port)
    schedule_mail('a@example.com', 'b@example.com')

    status, lines, errors = status_of('sitemessage_send_scheduled')

    assert status == 3
    assert SUMMARY.match(lines[2]).groups() == ('0', '2', '0')
    assert lines[3].startswith(
        f'Could not connect: smtp: Messenger warm-up failed: SMTP Error: 127.0.0.1:{port}: ConnectionRefusedError'
    )
    assert 'could not connect: smtp (exit status 3)' in errors
    logs = list(Dispatch.objects.values_list('dispatch_status', flat=True))
    assert logs == [Dispatch.DISPATCH_STATUS_ERROR] * 2  # nothing lost: retried on a later run


@override_settings(SITEMESSAGE_CONNECT_TIMEOUT=0.5)
def test_silent_server_times_out_and_exits_3(silent_server):
    import time

    port, accepted = silent_server
    register_smtp(port=port)  # no timeout argument, no EMAIL_TIMEOUT: SITEMESSAGE_CONNECT_TIMEOUT
    schedule_mail('a@example.com')

    started = time.monotonic()
    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert time.monotonic() - started < SILENCE_SECONDS - 2  # 1.4.0 and 2.0 before issue 10 waited for ever
    assert accepted  # it did connect: the wait was for the greeting
    assert status == 3
    assert f'SMTP Error: 127.0.0.1:{port}: ' in lines[3] and 'timed out' in lines[3]


@override_settings(SITEMESSAGE_CONNECT_TIMEOUT=600, EMAIL_TIMEOUT=0.3)
def test_email_timeout_wins_over_the_connect_timeout(silent_server):
    import time

    port, _accepted = silent_server
    register_smtp(port=port)
    schedule_mail('a@example.com')

    started = time.monotonic()
    status, _lines, _errors = status_of('sitemessage_send_scheduled')

    assert status == 3
    assert time.monotonic() - started < SILENCE_SECONDS - 2


def test_timeout_precedence(settings):
    from sitemessage.messengers.smtp import SMTPMessenger

    settings.EMAIL_TIMEOUT = None
    assert SMTPMessenger().timeout == 30  # the default of SITEMESSAGE_CONNECT_TIMEOUT
    settings.SITEMESSAGE_CONNECT_TIMEOUT = 12
    assert SMTPMessenger().timeout == 12
    settings.EMAIL_TIMEOUT = 7
    assert SMTPMessenger().timeout == 7
    assert SMTPMessenger(timeout=3).timeout == 3


def test_auth_refused_exits_3(smtp_server):
    register_smtp(port=smtp_server.port, login='user', password='secret', timeout=5)  # the server offers no AUTH
    schedule_mail('a@example.com')

    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert status == 3
    assert f'SMTP Error: 127.0.0.1:{smtp_server.port}: ' in lines[3] and 'AUTH' in lines[3]
    assert smtp_server.handler.envelopes == []


def test_tls_required_but_not_offered_exits_3(smtp_server):
    register_smtp(port=smtp_server.port, use_tls=True, timeout=5)
    schedule_mail('a@example.com')

    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert status == 3
    assert f'127.0.0.1:{smtp_server.port} does not offer STARTTLS' in lines[3]


def test_one_messenger_down_exits_3_though_others_sent(fake_messenger, closed_port):
    register_smtp(port=closed_port, timeout=5)
    schedule_mail('a@example.com')
    schedule('hello', 'someone')

    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert status == 3
    assert SUMMARY.match(lines[2]).groups() == ('1', '1', '0')
    assert fake_messenger.delivered == [('someone', 'hello')]


def test_temporary_errors_exit_4(fake_messenger):
    fake_messenger.fail_addresses = {'b': 'try later'}
    schedule('hello', 'a')
    schedule('hello', 'b')

    status, lines, errors = status_of('sitemessage_send_scheduled')

    assert status == 4
    assert SUMMARY.match(lines[2]).groups() == ('1', '1', '0')
    assert '1 dispatch(es) errored (retried later), 0 failed (exit status 4; --ok-on-errors exits 0)' in errors


def test_permanent_failures_exit_4(smtp_server, smtp_messenger):
    smtp_server.handler.refuse['gone@example.com'] = '550 No such user'
    schedule_mail('gone@example.com', 'here@example.com')

    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert status == 4
    assert SUMMARY.match(lines[2]).groups() == ('1', '0', '1')


def test_ok_on_errors_relaxes_only_dispatch_errors(fake_messenger):
    fake_messenger.fail_addresses = {'b': 'permanent'}
    schedule('hello', 'b')
    assert status_of('sitemessage_send_scheduled', '--ok-on-errors')[0] == 0

    fake_messenger.warmup_error = 'cannot connect'
    schedule('hello', 'c')
    status, lines, _errors = status_of('sitemessage_send_scheduled', '--ok-on-errors')
    assert status == 3
    assert lines[3] == 'Could not connect: fake: Messenger warm-up failed: cannot connect'


def test_exit_statuses_of_real_processes(procs, sink, closed_port):
    """What cron sees: the exit status of ``manage.py sitemessage_send_scheduled`` in a process of its own."""
    procs.use_sink(sink)
    procs.orm('schedule', count=2, prefix='ok')
    done = procs.django('sitemessage_send_scheduled', check=False)
    assert done.returncode == 0, done.stderr

    sink.handler.refuse[f'gone{0:04d}@example.com'] = '550 No such user'
    procs.orm('schedule', count=1, prefix='gone')
    refused = procs.django('sitemessage_send_scheduled', check=False)
    assert refused.returncode == 4
    assert procs.django('sitemessage_send_scheduled', '--ok-on-errors', check=False).returncode == 0

    port = closed_port
    procs.settings['SMTP_PORT'] = str(port)
    procs.orm('schedule', count=1, prefix='down')
    down = procs.django('sitemessage_send_scheduled', check=False)
    assert down.returncode == 3
    assert f'SMTP Error: 127.0.0.1:{port}: ConnectionRefusedError' in down.stdout
    assert 'could not connect: smtp (exit status 3)' in down.stderr

    help_text = procs.django('help', 'sitemessage_send_scheduled').stdout
    assert '  3  could not run: a messenger could not connect' in help_text and '--ok-on-errors' in help_text


# --prepare: messages scheduled without recipients --------------------------------------------------


def postponed(text='news'):
    """A message scheduled without recipients: its dispatches wait for prepare_dispatches()."""
    [(message, dispatches)] = schedule_messages(text)
    assert dispatches == [] and not message.dispatches_ready
    return message


def test_a_run_without_prepare_says_what_waits(fake_messenger):
    from sitemessage.models import Subscription

    Subscription.create('reader', 'plain', 'fake')
    postponed()
    postponed()

    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert status == 0
    assert SUMMARY.match(lines[2]).groups() == ('0', '0', '0')
    assert lines[3] == '2 message(s) wait for prepare_dispatches(): run with --prepare.'
    assert fake_messenger.delivered == []


def test_prepare_creates_dispatches_and_sends_them(fake_messenger):
    from sitemessage.models import Subscription

    Subscription.create('reader', 'plain', 'fake')
    message = postponed()

    status, lines, _errors = status_of('sitemessage_send_scheduled', '--prepare')

    assert status == 0
    assert lines == ['Sending scheduled messages  ...', 'Prepared dispatches: 1.', 'Sending done.', lines[3]]
    assert SUMMARY.match(lines[3]).groups() == ('1', '0', '0')
    assert fake_messenger.delivered == [('reader', 'news')]
    message.refresh_from_db()
    assert message.dispatches_ready


def test_prepare_says_what_still_waits_for_subscribers(fake_messenger):
    postponed()  # nobody subscribed

    status, lines, _errors = status_of('sitemessage_send_scheduled', '--prepare')

    assert status == 0
    assert lines[-1] == '1 message(s) scheduled without recipients still wait: no subscribers yet.'


def test_prepare_with_a_message_of_unknown_type_prepares_the_others_and_exits_3(fake_messenger):
    from sitemessage.models import Subscription

    Subscription.create('reader', 'plain', 'fake')
    Message.objects.create(cls='vanished', context={}, dispatches_ready=False)
    postponed()

    status, lines, _errors = status_of('sitemessage_send_scheduled', '--prepare')

    assert status == 3
    assert fake_messenger.delivered == [('reader', 'news')]
    assert lines[-1] == (
        '1 message(s) scheduled without recipients still wait: no subscribers yet, or of unknown type: vanished.'
    )


def test_the_waiting_count_is_one_query():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from sitemessage.sending import count_waiting_for_preparation

    postponed()
    postponed()

    with CaptureQueriesContext(connection) as queries:
        assert count_waiting_for_preparation() == 2
    assert len(queries) == 1 and 'COUNT' in queries[0]['sql'].upper()


# The worker: the same statuses with --passes, 0 when stopped; --prepare and its setting ------------------


def test_worker_passes_exit_with_the_statuses(fake_messenger):
    schedule('hello', 'a')
    assert status_of('sitemessage_worker', '--passes', '1', '--idle', '0')[0] == 0

    fake_messenger.fail_addresses = {'b': 'permanent'}
    schedule('hello', 'b')
    status, lines, _errors = status_of('sitemessage_worker', '--passes', '1', '--idle', '0')
    assert status == 4
    assert lines[-1].startswith('Worker stopped. Sent: 0, errors: 0, failed: 1')

    fake_messenger.warmup_error = 'cannot connect'
    schedule('hello', 'c')
    status, lines, _errors = status_of('sitemessage_worker', '--passes', '1', '--idle', '0', '--ok-on-errors')
    assert status == 3
    assert lines[-1] == 'Could not connect: fake: Messenger warm-up failed: cannot connect'


def test_worker_prepare_flag(fake_messenger):
    from sitemessage.models import Subscription

    Subscription.create('reader', 'plain', 'fake')
    postponed()

    status, lines, _errors = status_of('sitemessage_worker', '--passes', '1', '--idle', '0')
    assert status == 0 and fake_messenger.delivered == []
    assert lines[-1] == '1 message(s) wait for prepare_dispatches(): run with --prepare.'

    assert status_of('sitemessage_worker', '--passes', '1', '--idle', '0', '--prepare')[0] == 0
    assert fake_messenger.delivered == [('reader', 'news')]


@override_settings(SITEMESSAGE_WORKER_PREPARE_DISPATCHES=True)
def test_worker_prepare_setting(fake_messenger):
    from sitemessage.models import Subscription
    from sitemessage.worker import Worker

    Subscription.create('reader', 'plain', 'fake')
    postponed()

    totals = Worker(max_passes=1, idle_seconds=0).run()

    assert totals.sent == 1
    assert fake_messenger.delivered == [('reader', 'news')]


def test_use_ssl_on_a_plain_port_exits_3(smtp_server):
    register_smtp(port=smtp_server.port, use_ssl=True, timeout=5)
    schedule_mail('a@example.com')

    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert status == 3
    assert f'SMTP Error: 127.0.0.1:{smtp_server.port}: SSL' in lines[3]


@override_settings(SITEMESSAGE_CONNECT_TIMEOUT=0.5)
def test_xmpp_waits_for_a_silent_server_at_most_the_connect_timeout(silent_server):
    import time

    from sitemessage import utils

    pytest.importorskip('slixmpp')  # the xmpp extra; a skip fails strict (CI) runs
    from sitemessage.messengers.xmpp import XMPPSleekMessenger

    port, accepted = silent_server
    utils.register_messenger_objects(XMPPSleekMessenger('bot@localhost', 'secret', '127.0.0.1', port, use_tls=False))
    schedule_messages('hello', recipients('xmppsleek', 'someone@localhost'))

    started = time.monotonic()
    status, lines, _errors = status_of('sitemessage_send_scheduled')

    assert time.monotonic() - started < SILENCE_SECONDS - 2
    assert accepted
    assert status == 3
    assert lines[3].startswith('Could not connect: xmppsleek: Messenger warm-up failed: XMPP Error: ')
    assert f'127.0.0.1:{port}' in lines[3]


def test_worker_process_exits_3_when_smtp_is_down_and_0_when_stopped(procs, sink, closed_port):
    import signal

    procs.settings['SMTP_PORT'] = str(closed_port)
    procs.orm('schedule', count=1, prefix='down')

    down = procs.django('sitemessage_worker', '--passes', '1', '--idle', '0', check=False)
    assert down.returncode == 3, down.stdout + down.stderr
    assert 'Could not connect: smtp: ' in down.stdout

    worker = procs.start('sitemessage_worker', '--idle', '0.2')
    assert worker.wait_for_output('Worker started.')
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.output()


@pytest.mark.parametrize('value', ['30', 0, -1, True])
def test_a_bad_connect_timeout_is_named(settings, value):
    from sitemessage.exceptions import SiteMessageConfigurationError
    from sitemessage.messengers.smtp import SMTPMessenger

    settings.EMAIL_TIMEOUT = None
    settings.SITEMESSAGE_CONNECT_TIMEOUT = value

    with pytest.raises(SiteMessageConfigurationError, match=f'SITEMESSAGE_CONNECT_TIMEOUT .* got {value!r}'):
        SMTPMessenger().timeout


def test_no_connect_timeout_is_allowed(settings):
    from sitemessage.messengers.smtp import SMTPMessenger

    settings.EMAIL_TIMEOUT = None
    settings.SITEMESSAGE_CONNECT_TIMEOUT = None
    assert SMTPMessenger().timeout is None

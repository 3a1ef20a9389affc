"""``manage.py sitemessage_status``: the queue by status and messenger, its text and JSON output,
the thresholds and their exit status; and the progress lines of ``sitemessage_send_scheduled``."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from sitemessage.management.commands.sitemessage_status import THRESHOLD_EXCEEDED
from sitemessage.models import Dispatch, DispatchError, Message
from sitemessage.queue_status import get_queue_status
from sitemessage.toolbox import recipients, schedule_messages
from tests.processes import REPO

pytestmark = pytest.mark.django_db

PENDING, SENT, ERROR, FAILED, PROCESSING = (
    Dispatch.DISPATCH_STATUS_PENDING,
    Dispatch.DISPATCH_STATUS_SENT,
    Dispatch.DISPATCH_STATUS_ERROR,
    Dispatch.DISPATCH_STATUS_FAILED,
    Dispatch.DISPATCH_STATUS_PROCESSING,
)


def run(*args):
    out, err = StringIO(), StringIO()
    call_command('sitemessage_status', *args, stdout=out, stderr=err)
    return out.getvalue().splitlines()


def dispatch(messenger, status, address='a', **fields):
    """A dispatch in ``status``; ``fields`` (times relative to now, in seconds ago) are written as given."""
    message = Message.objects.create(cls='plain', context={'stext_': 'x'}, dispatches_ready=True)
    row = Dispatch.objects.create(message=message, messenger=messenger, address=address, dispatch_status=status)
    now = timezone.now()
    updates = {name: now - timedelta(seconds=ago) for name, ago in fields.items()}
    if updates:
        Dispatch.objects.filter(pk=row.pk).update(**updates)
    return row


def error_entry(row, seconds_ago):
    entry = DispatchError.objects.create(dispatch=row, error_log='refused')
    DispatchError.objects.filter(pk=entry.pk).update(time_created=timezone.now() - timedelta(seconds=seconds_ago))


@pytest.fixture
def queue():
    """smtp: 2 pending (oldest created 300 s ago), 1 error not due before an hour, 2 failed (one 10 min ago,
    one 2 h ago), 1 sent; fake: 1 processing whose lease ran out 60 s ago; 3 error entries in the last hour
    (and one older); 1 message waiting for prepare_dispatches()."""
    dispatch('smtp', PENDING, time_created=300)
    dispatch('smtp', PENDING)
    retried = dispatch('smtp', ERROR, next_attempt_at=-3600)
    recent_failure = dispatch('smtp', FAILED, time_dispatched=600)
    old_failure = dispatch('smtp', FAILED, time_dispatched=7200)
    dispatch('smtp', SENT, time_dispatched=5)
    crashed = dispatch('fake', PROCESSING, time_created=900, lease_until=60)
    for row, ago in ((retried, 30), (recent_failure, 600), (crashed, 1000), (old_failure, 7200)):
        error_entry(row, ago)
    Message.objects.create(cls='plain', context={'stext_': 'for subscribers'}, dispatches_ready=False)


def test_status_counts_by_messenger_with_a_few_aggregate_queries(queue, django_assert_num_queries):
    with django_assert_num_queries(4):
        status = get_queue_status()

    smtp, fake = status.messengers['smtp'], status.messengers['fake']
    assert (smtp.pending, smtp.processing, smtp.error, smtp.failed, smtp.waiting) == (2, 0, 1, 2, 3)
    assert (smtp.due, smtp.errors_last_hour, smtp.failed_last_hour) == (2, 2, 1)
    assert smtp.oldest_due_age == pytest.approx(300, abs=10)
    # The lease of the crashed run ran out 60 s ago: it is due since then (not since its creation).
    assert (fake.processing, fake.due, fake.errors_last_hour) == (1, 1, 1)
    assert fake.oldest_due_age == pytest.approx(60, abs=10)
    assert status.totals.oldest_due_age == smtp.oldest_due_age
    assert status.awaiting_preparation == 1


def test_status_query_count_does_not_grow_with_the_queue(queue, django_assert_num_queries):
    for index in range(30):
        dispatch(f'messenger{index % 3}', (PENDING, ERROR, FAILED)[index % 3], address=str(index))
    with django_assert_num_queries(4):
        assert get_queue_status().totals.waiting == 3 + 1 + 20


def test_status_text_output(queue):
    lines = run()

    assert re.fullmatch(r'Delivery queue at \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC', lines[0])
    assert re.split(r'\s{2,}', lines[1]) == [
        'messenger',
        'pending',
        'processing',
        'error',
        'failed',
        'due',
        'oldest due',
        'errors 1h',
        'failed 1h',
    ]
    assert lines[2].split() == ['fake', '0', '1', '0', '0', '1', lines[2].split()[6], '1', '0']
    assert re.fullmatch(r'1m0\ds', lines[2].split()[6])
    assert lines[3].split()[:6] == ['smtp', '2', '0', '1', '2', '2']
    assert re.fullmatch(r'5m0\ds', lines[3].split()[6])
    assert lines[3].split()[7:] == ['2', '1']
    assert lines[4].split()[:6] == ['total', '2', '1', '1', '2', '3']
    assert lines[4].split()[7:] == ['3', '1']
    assert re.fullmatch(r'Oldest due dispatch: 5m0\ds', lines[5])
    assert lines[6:] == ['Messages waiting for prepare_dispatches(): 1']
    # Columns line up: every row is as wide as the header.
    assert len({len(line) for line in lines[1:5]}) == 1


def test_status_of_an_empty_queue():
    assert run()[1:] == [
        'No dispatches waiting, none failed.',
        'Oldest due dispatch: -',
        'Messages waiting for prepare_dispatches(): 0',
    ]


def test_status_json_output(queue):
    data = json.loads('\n'.join(run('--json')))

    assert set(data) == {'checked_at', 'messengers', 'totals', 'awaiting_preparation', 'problems'}
    smtp = data['messengers']['smtp']
    assert smtp['oldest_due_age_seconds'] == pytest.approx(300, abs=10)
    assert {key: value for key, value in smtp.items() if key != 'oldest_due_age_seconds'} == {
        'pending': 2,
        'processing': 0,
        'error': 1,
        'failed': 2,
        'waiting': 3,
        'due': 2,
        'errors_last_hour': 2,
        'failed_last_hour': 1,
    }
    assert data['totals']['waiting'] == 4
    assert data['totals']['errors_last_hour'] == 3
    assert data['awaiting_preparation'] == 1
    assert data['problems'] == []


# The limit each threshold is exceeded above, in the `queue` fixture.
THRESHOLD_CASES = [
    ('--max-oldest-age', 300, 290, 'oldest due dispatch age 30'),
    ('--max-pending', 4, 3, '4 dispatches waiting > --max-pending 3'),
    ('--max-errors', 3, 2, '3 failed attempts in the last hour > --max-errors 2'),
    ('--max-failed', 1, 0, '1 dispatches failed in the last hour > --max-failed 0'),
    ('--max-unprepared', 1, 0, '1 messages waiting for prepare_dispatches() > --max-unprepared 0'),
]


@pytest.mark.parametrize('option, within, exceeded, problem', THRESHOLD_CASES)
def test_each_threshold_sets_the_exit_status(queue, option, within, exceeded, problem):
    if option == '--max-oldest-age':
        within = 400  # the age grows while the test runs
    run(option, str(within))  # not exceeded: no error

    with pytest.raises(CommandError) as caught:
        run(option, str(exceeded))

    assert caught.value.returncode == THRESHOLD_EXCEEDED == 3
    assert problem in str(caught.value)


def test_exceeded_thresholds_are_listed_in_the_json(queue):
    out = StringIO()
    with pytest.raises(CommandError):
        call_command('sitemessage_status', '--json', '--max-pending', '0', '--max-failed', '0', stdout=out)

    assert json.loads(out.getvalue())['problems'] == [
        '4 dispatches waiting > --max-pending 0',
        '1 dispatches failed in the last hour > --max-failed 0',
    ]


def test_status_exit_statuses_of_the_real_command(procs):
    """Through ``python -m django`` on the test database (SQLite, or PostgreSQL in the postgres run)."""
    procs.orm('schedule', count=3, prefix='status')

    fine = procs.django('sitemessage_status', '--max-pending', '3', '--max-oldest-age', '600')
    exceeded = procs.django('sitemessage_status', '--json', '--max-pending', '2', check=False)
    bad = procs.django('sitemessage_status', '--max-pending', 'many', check=False)

    assert 'smtp' in fine.stdout and fine.stderr == ''
    assert exceeded.returncode == 3
    assert json.loads(exceeded.stdout)['totals']['pending'] == 3
    assert 'Thresholds exceeded: 3 dispatches waiting > --max-pending 2' in exceeded.stderr
    assert bad.returncode not in (0, 3)
    assert "'many'" in bad.stderr


# Progress of sitemessage_send_scheduled ------------------------------------------------------------

BATCH_LINE = re.compile(r'^Batch (\d+): sent (\d+), errors (\d+), failed (\d+) so far, [\d.]+ dispatches/s$')


def test_send_scheduled_prints_a_line_per_batch_at_verbosity_2(fake_messenger, settings):
    settings.SITEMESSAGE_SEND_BATCH_SIZE = 2
    fake_messenger.fail_addresses = {'b': 'try later', 'd': 'permanent'}
    for address in 'abcde':
        schedule_messages('hello', recipients('fake', address))

    out = StringIO()
    call_command('sitemessage_send_scheduled', verbosity=2, stdout=out, ok_on_errors=True)
    lines = out.getvalue().splitlines()

    assert lines[0] == 'Sending scheduled messages  ...'
    assert [BATCH_LINE.match(line).groups() for line in lines[1:4]] == [
        ('1', '1', '1', '0'),
        ('2', '2', '1', '1'),
        ('3', '3', '1', '1'),
    ]
    assert lines[4:6] == ['Sending done.', 'Sent: 3, errors: 1, failed: 1, seconds: ' + lines[5].split()[-1]]
    assert '\r' not in out.getvalue()


def _send_scheduled_output(procs, tty: bool) -> str:
    procs.orm('schedule', count=3, prefix='progress')
    command = [sys.executable, '-m', 'django', 'sitemessage_send_scheduled']
    env = procs.env({'SEND_BATCH_SIZE': 1, 'SMTP_PORT': '1'})  # nothing listens on port 1: errors, quickly
    if not tty:
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=60).stdout
    leader, follower = pty.openpty()
    try:
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=follower, stderr=subprocess.DEVNULL)
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the other end closed
                break
            if not chunk:
                break
            chunks.append(chunk)
        process.wait(timeout=60)
    finally:
        os.close(leader)
    return b''.join(chunks).decode()


def test_send_scheduled_shows_a_live_line_on_a_terminal_only(procs):
    on_terminal = _send_scheduled_output(procs, tty=True)
    lines = on_terminal.replace('\r\n', '\n').split('\n')

    assert lines[0] == 'Sending scheduled messages  ...'
    live = [part for part in lines[1].split('\r') if part]
    assert [re.match(r'sent (\d+), errors (\d+), failed (\d+) so far', part).groups() for part in live] == [
        ('0', '1', '0'),
        ('0', '2', '0'),
        ('0', '3', '0'),
    ]
    assert lines[2] == 'Sending done.'

    piped = _send_scheduled_output(procs, tty=False)
    assert '\r' not in piped
    assert piped.splitlines()[:2] == ['Sending scheduled messages  ...', 'Sending done.']

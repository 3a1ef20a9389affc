"""Fan-out: ``prepare_dispatches()`` of one message to N subscribers, beside a raw chunked ``bulk_create``.

Run from the repository root (PostgreSQL at 127.0.0.1:5432, user ``postgres``, no password)::

    .venv/bin/python benchmarks/fanout.py                          # 10k and 200k subscribers
    .venv/bin/python benchmarks/fanout.py --sizes 10000,1000000    # the target run

The script creates the database ``sitemessage_fanout_bench`` (dropping an old one) and drops it at
the end. For each size it fills N address subscriptions to ``email_plain`` over ``smtp`` (not timed),
then measures, each in a fresh subprocess (so one size's memory does not hide the next one's):

- ``prepare_dispatches()`` of one message scheduled without recipients: wall time, growth of the
  process' peak RSS (``ru_maxrss``) during the call, dispatches created;
- the raw baseline: the same N ``Dispatch`` rows built and written with ``bulk_create`` in chunks of
  2,000, one transaction per chunk (autocommit), measured the same way.

Targets (issue 14): at the largest size, peak RSS growth <= 1.3x that at the smallest size, and
time <= 1.2x the raw insert. Each row says PASS or FAIL; the exit status is 1 if any FAILs.

``--send N`` then prepares one message to N subscribers and has 4 worker processes send it at
once to a local SMTP sink (``compare.Sink``): duplicates and lost e-mails are counted at the sink,
as in ``compare.py`` scenario 5 (target: 0 and 0, every dispatch Sent).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DB_NAME = 'sitemessage_fanout_bench'
RAW_CHUNK = 2000
RESULT_MARK = '@@fanout-result@@ '


def address(index: int) -> str:
    return f'subscriber{index}@example.com'


# Children: one task each, in a fresh interpreter --------------------------------------------------------


class URLConf:
    """ROOT_URLCONF: sitemessage's URLs (filled in after set-up), so e-mails carry signed links."""

    urlpatterns: list = []


def setup_django() -> None:
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY='fanout-benchmark',
        USE_TZ=True,
        DEBUG=False,
        INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage'],
        DATABASES={
            'default': {
                'ENGINE': 'django.db.backends.postgresql',
                'NAME': DB_NAME,
                'HOST': os.environ.get('SITEMESSAGE_PG_HOST', '127.0.0.1'),
                'PORT': os.environ.get('SITEMESSAGE_PG_PORT', '5432'),
                'USER': os.environ.get('SITEMESSAGE_PG_USER', 'postgres'),
                'PASSWORD': os.environ.get('SITEMESSAGE_PG_PASSWORD', ''),
            }
        },
        DEFAULT_AUTO_FIELD='django.db.models.BigAutoField',
        SITEMESSAGE_SITE_URL='https://example.com',
        ROOT_URLCONF=URLConf,
        LOGGING_CONFIG=None,
    )
    django.setup()
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import get_sitemessage_urls, register_messenger_objects

    URLConf.urlpatterns = get_sitemessage_urls()
    port = int(os.environ.get('FANOUT_SMTP_PORT', '1'))  # 1: nothing is sent, except with --send
    register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1', port=port, timeout=30))


def task_migrate() -> dict:
    from django.core.management import call_command

    call_command('migrate', verbosity=0)
    return {}


def task_fill(n: int) -> dict:
    """N address subscriptions, no messages, no dispatches (tables emptied, ids restarted)."""
    from django.db import connection

    from sitemessage.models import Subscription

    with connection.cursor() as cursor:
        cursor.execute(
            'TRUNCATE sitemessage_dispatch, sitemessage_message, sitemessage_subscription RESTART IDENTITY CASCADE'
        )
    for start in range(0, n, 10000):
        Subscription.objects.bulk_create(
            Subscription(message_cls='email_plain', messenger_cls='smtp', address=address(i))
            for i in range(start, min(n, start + 10000))
        )
    with connection.cursor() as cursor:
        cursor.execute('VACUUM ANALYZE')
    return {'subscriptions': Subscription.objects.count()}


def _reset_queue() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute('TRUNCATE sitemessage_dispatch, sitemessage_message RESTART IDENTITY CASCADE')
        cursor.execute('VACUUM ANALYZE sitemessage_dispatch')


def _measure(run) -> dict:
    """Time ``run()`` and the growth of the peak RSS it causes (the process is warm: Django set up, connected)."""
    import gc

    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    rows = run()
    seconds = time.perf_counter() - started
    return {
        'seconds': seconds,
        'rss_mb': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
        'rows': rows,
    }


def task_prepare(n: int) -> dict:
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Dispatch
    from sitemessage.toolbox import prepare_dispatches, schedule_messages

    _reset_queue()
    schedule_messages(EmailTextMessage('Weekly digest', 'Nothing much happened.'))
    Dispatch.objects.exists()  # connected and warm, like the raw run

    def run() -> int:
        return len(prepare_dispatches())

    result = _measure(run)
    result['stored'] = Dispatch.objects.count()
    result['distinct'] = Dispatch.objects.values('address').distinct().count()
    return result


def task_raw(n: int) -> dict:
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Dispatch
    from sitemessage.toolbox import schedule_messages

    _reset_queue()
    ((message, _none),) = schedule_messages(EmailTextMessage('Weekly digest', 'Nothing much happened.'))
    Dispatch.objects.exists()

    def run() -> int:
        for start in range(0, n, RAW_CHUNK):
            Dispatch.objects.bulk_create(
                [
                    Dispatch(message=message, messenger='smtp', address=address(i))
                    for i in range(start, min(n, start + RAW_CHUNK))
                ]
            )
        return n

    result = _measure(run)
    result['stored'] = Dispatch.objects.count()
    result['distinct'] = result['stored']
    return result


def task_send() -> dict:
    """One worker: send until the queue is empty."""
    from sitemessage.toolbox import send_scheduled_messages

    report = send_scheduled_messages()
    return {'sent': report.sent, 'errors': report.errors, 'failed': report.failed}


def task_statuses() -> dict:
    from django.db.models import Count

    from sitemessage.models import Dispatch

    rows = Dispatch.objects.values_list('dispatch_status').annotate(count=Count('pk')).order_by()
    return {str(status): count for status, count in rows}


TASKS = {
    'migrate': task_migrate,
    'fill': task_fill,
    'prepare': task_prepare,
    'raw': task_raw,
    'send': task_send,
    'statuses': task_statuses,
}


def child_main(task: str, options: dict) -> None:
    setup_django()
    print(RESULT_MARK + json.dumps(TASKS[task](**options)), flush=True)


# The parent -------------------------------------------------------------------------------------------------


def start_child(task: str, env: dict | None = None, **options) -> subprocess.Popen:
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))
    return subprocess.Popen(
        [sys.executable, __file__, '--child', task, json.dumps(options)],
        cwd=REPO,
        env={**os.environ, 'PYTHONPATH': path, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def result_of(process: subprocess.Popen, what: str) -> dict:
    stdout, stderr = process.communicate(timeout=7200)
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise RuntimeError(f'child {what} exited {process.returncode}:\n{stderr[-3000:]}')


def child(task: str, **options) -> dict:
    return result_of(start_child(task, **options), f'{task} {options}')


def send_with_workers(n: int, workers: int = 4) -> dict:
    """Prepare one message to ``n`` subscribers, send it with ``workers`` processes at once; count at the sink."""
    from compare import Sink  # benchmarks/ is the script's directory, first on sys.path

    child('fill', n=n)
    prepared = child('prepare', n=n)
    sink = Sink(processes=4).start()
    try:
        started = time.perf_counter()
        env = {'FANOUT_SMTP_PORT': str(sink.port)}
        reports = [result_of(process, 'send') for process in [start_child('send', env) for _ in range(workers)]]
        seconds = time.perf_counter() - started
        received = sink.counts()
    finally:
        sink.stop()
    expected = {address(i) for i in range(n)}
    return {
        'prepared': prepared['stored'],
        'sent_by_worker': [report['sent'] for report in reports],
        'duplicates': sum(count - 1 for to, count in received.items() if to in expected),
        'lost': len(expected - set(received)),
        'statuses': child('statuses'),
        'rate': n / seconds,
    }


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(
        host=os.environ.get('SITEMESSAGE_PG_HOST', '127.0.0.1'),
        port=os.environ.get('SITEMESSAGE_PG_PORT', '5432'),
        user=os.environ.get('SITEMESSAGE_PG_USER', 'postgres'),
        password=os.environ.get('SITEMESSAGE_PG_PASSWORD', ''),
        dbname='postgres',
        autocommit=True,
    ) as connection:
        connection.execute(sql)


def best(runs: list) -> dict:
    """The fastest run, with the largest RSS growth of all runs (memory is not noise to pick from)."""
    fastest = dict(min(runs, key=lambda run: run['seconds']))
    fastest['rss_mb'] = max(run['rss_mb'] for run in runs)
    fastest['all_seconds'] = [run['seconds'] for run in runs]
    return fastest


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='10000,200000', help='subscriber counts, comma-separated')
    parser.add_argument('--repeat', type=int, default=1, help='runs of each, interleaved; the best time is shown')
    parser.add_argument('--send', type=int, default=0, metavar='N', help='then send to N subscribers with 4 workers')
    args = parser.parse_args()
    sizes = sorted(int(size) for size in args.sizes.split(','))

    pg_admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    pg_admin(f'CREATE DATABASE "{DB_NAME}"')
    results = {}
    try:
        child('migrate')
        for n in sizes:
            progress(f'filling {n} subscriptions')
            child('fill', n=n)
            runs: dict = {'prepare': [], 'raw': []}
            for attempt in range(args.repeat):
                for task in runs:
                    progress(f'{task} {n} ({attempt + 1}/{args.repeat})')
                    runs[task].append(child(task, n=n))
            results[n] = tuple(best(runs[task]) for task in ('prepare', 'raw'))
        if args.send:
            progress(f'4 workers sending to {args.send} subscribers')
            sent = send_with_workers(args.send)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')

    load = ' '.join(f'{value:.2f}' for value in os.getloadavg())
    print(f'prepare_dispatches() of one message to N subscribers, PostgreSQL, load average {load}')
    header = (
        'subscribers',
        'ours s',
        'raw s',
        'x raw',
        'ours RSS +MB',
        'raw RSS +MB',
        'dispatches',
        'target',
        'result',
    )
    print(' | '.join(header))
    smallest_rss = results[sizes[0]][0]['rss_mb']
    failed = False
    for n in sizes:
        ours, raw = results[n]
        time_ratio = ours['seconds'] / raw['seconds']
        memory_ratio = ours['rss_mb'] / smallest_rss if smallest_rss else float('inf')
        exact = ours['stored'] == ours['distinct'] == n and ours['rows'] == n
        target = verdict = ''
        if n == sizes[-1] and len(sizes) > 1:
            target = f'time <= 1.2x raw, RSS <= 1.3x that at {sizes[0]} ({memory_ratio:.2f}x)'
            ok = time_ratio <= 1.2 and (ours['rss_mb'] <= 1.3 * smallest_rss or ours['rss_mb'] <= smallest_rss + 1)
            verdict = 'PASS' if ok and exact else 'FAIL'
            failed = failed or verdict == 'FAIL'
        if not exact:
            failed, verdict = True, f'FAIL: {ours["rows"]} returned, {ours["stored"]} stored'
        print(
            ' | '.join(
                [
                    str(n),
                    f'{ours["seconds"]:.2f}',
                    f'{raw["seconds"]:.2f}',
                    f'{time_ratio:.2f}',
                    f'{ours["rss_mb"]:.1f}',
                    f'{raw["rss_mb"]:.1f}',
                    str(ours['stored']),
                    target,
                    verdict,
                ]
            )
        )
    if args.send:
        ok = sent['duplicates'] == 0 and sent['lost'] == 0 and sent['statuses'] == {'2': args.send}
        failed = failed or not ok
        print(
            f'sent by 4 workers: {args.send} prepared ({sent["prepared"]}), {sent["rate"]:.0f} msgs/s, '
            f'sent by worker {sent["sent_by_worker"]}, duplicates {sent["duplicates"]}, lost {sent["lost"]}, '
            f'dispatch statuses {sent["statuses"]} | target 0 duplicates, 0 lost, all sent | '
            + ('PASS' if ok else 'FAIL')
        )
    return 1 if failed else 0


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        child_main(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(main())

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
        LOGGING_CONFIG=None,
    )
    django.setup()
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1', port=1))


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


TASKS = {'migrate': task_migrate, 'fill': task_fill, 'prepare': task_prepare, 'raw': task_raw}


def child_main(task: str, options: dict) -> None:
    setup_django()
    print(RESULT_MARK + json.dumps(TASKS[task](**options)), flush=True)


# The parent -------------------------------------------------------------------------------------------------


def child(task: str, **options) -> dict:
    completed = subprocess.run(
        [sys.executable, __file__, '--child', task, json.dumps(options)],
        cwd=REPO,
        env={**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')]))},
        capture_output=True,
        text=True,
        timeout=7200,
    )
    for line in completed.stdout.splitlines():
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK) :])
    raise RuntimeError(f'child {task} {options} exited {completed.returncode}:\n{completed.stderr[-3000:]}')


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
    return 1 if failed else 0


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        child_main(sys.argv[2], json.loads(sys.argv[3]))
    else:
        sys.exit(main())

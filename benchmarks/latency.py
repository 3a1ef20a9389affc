"""Latency to the inbox: from the scheduling commit to the SMTP server's 250, with a worker running.

Run from the repository root::

    .venv/bin/python benchmarks/latency.py [--quick] [--db sqlite,postgres,mysql] [--count N] [--rate R]

For each database it starts one ``sitemessage_worker`` (a subprocess: the default poll of
``SITEMESSAGE_WORKER_IDLE_SECONDS``, 5 s, and the default ``SITEMESSAGE_WAKEUP``: NOTIFY on PostgreSQL,
local sockets on SQLite and MariaDB), then schedules e-mails one at a time at a steady rate from
another subprocess, each in its own transaction, stamping the moment its transaction committed.
An ``aiosmtpd`` server in this process stamps the moment it answers 250 to each e-mail. The
latency of an e-mail is the difference (one host, one clock).

Beside them: the cron line, the latency a once-a-minute ``sitemessage_send_scheduled`` gives
(computed: commits spread evenly over the minute wait for the next run, plus the median delivery
time measured above), and django-post_office's documented behaviour (not measured, see README).

Databases: SQLite, a file in a temporary directory; PostgreSQL at 127.0.0.1:5432 (user postgres)
and MariaDB/MySQL at 127.0.0.1:3306 (root, no password), throw-away databases created and dropped
by the script. A database that cannot be reached is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TARGET_P99_MS = 100.0


def address(index: int) -> str:
    return f'lat{index:05d}@example.com'


# Children: the worker and the scheduler, configured from the environment ----------------------------


def _configure() -> None:
    """Standalone Django for a child: the database from BENCH_DB / BENCH_DB_NAME, the SMTP messenger."""
    import django
    from django.conf import settings

    engine, name = os.environ['BENCH_DB'], os.environ['BENCH_DB_NAME']
    if engine == 'sqlite':
        database = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': name, 'OPTIONS': {'timeout': 30}}
        if not os.environ.get('BENCH_SQLITE_DEFAULTS'):  # as docs/delivery.rst advises with a worker (Django 5.1+)
            database['OPTIONS']['transaction_mode'] = 'IMMEDIATE'
    elif engine == 'postgres':
        database = {'ENGINE': 'django.db.backends.postgresql', 'HOST': '127.0.0.1', 'USER': 'postgres', 'NAME': name}
    else:
        import pymysql

        pymysql.install_as_MySQLdb()
        database = {'ENGINE': 'django.db.backends.mysql', 'HOST': '127.0.0.1', 'USER': 'root', 'NAME': name}
    settings.configure(
        INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage'],
        DATABASES={'default': database},
        USE_TZ=True,
        SECRET_KEY='latency',
        DEFAULT_FROM_EMAIL='robot@example.com',
        SITEMESSAGE_SITE_URL='https://example.com',
        ROOT_URLCONF='sitemessage.urls',  # the unsubscribe link of each e-mail
        LOGGING={'version': 1, 'loggers': {'sitemessage': {'level': 'WARNING'}}},
    )
    django.setup()
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(SMTPMessenger('robot@example.com', host='127.0.0.1', port=int(os.environ['BENCH_SMTP'])))


def child_migrate() -> None:
    from django.core.management import call_command
    from django.db import connection

    call_command('migrate', verbosity=0)
    if connection.vendor == 'sqlite' and not os.environ.get('BENCH_SQLITE_DEFAULTS'):
        with connection.cursor() as cursor:  # the journal mode is stored in the file: every process uses it
            cursor.execute('PRAGMA journal_mode=WAL')


def child_status() -> None:
    """Print the dispatches' statuses and the last error: why e-mails were not delivered."""
    from django.db.models import Count

    from sitemessage.models import Dispatch, DispatchError

    print(list(Dispatch.objects.values('dispatch_status').annotate(n=Count('id'))))
    print(DispatchError.objects.values_list('error_log', flat=True).last())


def child_worker() -> None:
    from sitemessage.background.channels import get_channel
    from sitemessage.background.worker import Worker

    worker = Worker()
    worker.install_signal_handlers()
    print(f'ready {type(get_channel()).__name__} idle={worker.idle_seconds:g}s', flush=True)
    worker.run()


def child_schedule(count: int, rate: float) -> None:
    """Schedule ``count`` e-mails, one per transaction, ``rate`` a second; print each commit's time."""
    from django.db import transaction

    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.toolbox import recipients, schedule_messages

    committed: list[float] = [0.0] * count
    start = time.monotonic() + 0.2
    for index in range(count):
        pause = start + index / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        with transaction.atomic():
            # Registered first, so it runs first after the commit: before the wake-up is announced.
            transaction.on_commit(lambda index=index: committed.__setitem__(index, time.time()))
            schedule_messages(EmailTextMessage('Latency', f'E-mail {index}'), recipients('smtp', address(index)))
    print(json.dumps(committed), flush=True)


# The parent: SMTP server, databases, figures ---------------------------------------------------------


class Stamps:
    """aiosmtpd handler: the time of the 250 to each recipient."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self.lock = threading.Lock()

    async def handle_DATA(self, server, session, envelope):
        now = time.time()
        with self.lock:
            for rcpt in envelope.rcpt_tos:
                self.at[rcpt] = now
        return '250 Message accepted for delivery'


def run_child(what: str, env: dict, *args: str, timeout: float = 300) -> str:
    result = subprocess.run(
        [sys.executable, __file__, '--child', what, *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode:
        raise RuntimeError(f'{what} failed:\n{result.stdout}\n{result.stderr[-3000:]}')
    return result.stdout


class Database:
    """A throw-away database of one engine: ``create()`` returns its NAME, ``drop()`` removes it."""

    def __init__(self, engine: str, tmp: Path):
        self.engine, self.tmp = engine, tmp
        self.name = f'sm_latency_{uuid.uuid4().hex[:10]}'

    def _admin(self):
        if self.engine == 'postgres':
            import psycopg

            return psycopg.connect('host=127.0.0.1 user=postgres dbname=postgres', autocommit=True, connect_timeout=5)
        import pymysql

        return pymysql.connect(host='127.0.0.1', user='root', password='', connect_timeout=5, autocommit=True)

    def create(self) -> str:
        if self.engine == 'sqlite':
            return str(self.tmp / f'{self.name}.sqlite3')
        with self._admin() as connection:
            connection.cursor().execute(f'CREATE DATABASE {self.name}')
        return self.name

    def drop(self) -> None:
        if self.engine == 'sqlite':
            return
        force = ' WITH (FORCE)' if self.engine == 'postgres' else ''
        with self._admin() as connection:
            connection.cursor().execute(f'DROP DATABASE IF EXISTS {self.name}{force}')


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def measure(engine: str, options: argparse.Namespace, count: int, tmp: Path, smtp_port: int, stamps: Stamps) -> dict:
    database = Database(engine, tmp)
    name = database.create()
    env = {key: value for key, value in os.environ.items() if key not in ('DJANGO_SETTINGS_MODULE',)}
    env.update(
        BENCH_DB=engine,
        BENCH_DB_NAME=name,
        BENCH_SMTP=str(smtp_port),
        BENCH_SQLITE_DEFAULTS='1' if options.sqlite_defaults else '',
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), env.get('PYTHONPATH')])),
        PYTHONUNBUFFERED='1',
    )
    worker = None
    try:
        run_child('migrate', env)
        log = tmp / f'worker-{engine}.log'
        with open(log, 'wb') as output:  # a file, not a pipe: nobody reads it while it runs
            worker = subprocess.Popen(
                [sys.executable, __file__, '--child', 'worker'],
                env=env,
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ready = ''
        while not ready.startswith('ready') and worker.poll() is None:
            time.sleep(0.05)
            ready = log.read_text().partition('\n')[0] if log.read_text().endswith('\n') else ''
        if not ready.startswith('ready'):
            raise RuntimeError(f'the worker did not start: {log.read_text()[-2000:]}')
        time.sleep(0.5)  # its first, empty pass is over: it waits for a wake-up or its poll
        committed = json.loads(run_child('schedule', env, str(count), str(options.rate)).strip().splitlines()[-1])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and sum(address(i) in stamps.at for i in range(count)) < count:
            time.sleep(0.05)
        latencies = [(stamps.at[address(i)] - committed[i]) * 1000 for i in range(count) if address(i) in stamps.at]
        lost = count - len(latencies)
        if lost:
            print(log.read_text()[-3000:], run_child('status', env), file=sys.stderr)
        return {'ready': ready, 'latencies': latencies, 'committed': committed, 'lost': lost}
    finally:
        if worker is not None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
        database.drop()
        with stamps.lock:
            stamps.at.clear()


def cron_latencies(count: int, delivery_ms: float) -> list[float]:
    """A cron run at the start of every minute: e-mails committed evenly over the minute wait for it, then deliver."""
    return [(60 - (index + 0.5) * 60 / count) * 1000 + delivery_ms for index in range(count)]


def row(label: str, values: list[float], note: str = '') -> str:
    figures = (
        f'{statistics.median(values):9.0f} {percentile(values, 0.99):9.0f} {max(values):9.0f}'
        if values
        else f'{"-":>9} {"-":>9} {"-":>9}'
    )
    return f'{label:<44} {figures}  {note}'


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='100 e-mails per database instead of 500')
    parser.add_argument('--count', type=int, default=None, help='e-mails per database (default 500)')
    parser.add_argument('--rate', type=float, default=20.0, help='e-mails scheduled per second (default 20)')
    parser.add_argument('--db', default='postgres,sqlite,mysql', help='comma-separated: postgres,sqlite,mysql')
    parser.add_argument(
        '--sqlite-defaults',
        action='store_true',
        help='SQLite as it comes (rollback journal, deferred transactions) instead of WAL and IMMEDIATE transactions',
    )
    parser.add_argument('--child', help=argparse.SUPPRESS)
    options, rest = parser.parse_known_args()
    if options.child:
        _configure()
        if options.child == 'schedule':
            child_schedule(int(rest[0]), float(rest[1]))
        else:
            globals()[f'child_{options.child}']()
        return 0

    sys.path.insert(0, str(REPO))
    from tests.smtp_handlers import loopback_controller  # port 0: no race for a free port

    count = options.count or (100 if options.quick else 500)
    stamps = Stamps()
    controller = loopback_controller(stamps)
    controller.start()
    port = controller.port
    print(f'{count} e-mails per database, one per transaction, {options.rate:g}/s; load {os.getloadavg()[0]:.2f}')
    print(f'{"from the scheduling commit to the 250 (ms)":<44} {"p50":>9} {"p99":>9} {"max":>9}')
    failed = False
    deliveries: list[float] = []
    try:
        with tempfile.TemporaryDirectory(prefix='sm-latency-') as tmp:
            for engine in options.db.split(','):
                try:
                    result = measure(engine, options, count, Path(tmp), port, stamps)
                except Exception as error:  # an engine that is not there: say so, go on
                    print(row(f'sitemessage worker, {engine}', [], f'not run: {str(error).strip()[:200]}'))
                    continue
                values = result['latencies']
                passed = bool(values) and not result['lost'] and percentile(values, 0.99) <= TARGET_P99_MS
                failed = failed or not passed
                wakeup = result['ready'].split()[1].replace('Channel', '').lower() or 'poll'
                note = f'{"PASS" if passed else "FAIL"} (p99 <= {TARGET_P99_MS:g}); wake-up: {wakeup}'
                if result['lost']:
                    note += f'; {result["lost"]} not delivered within 30 s'
                label = f'sitemessage worker, {engine}'
                if engine == 'sqlite':
                    label += ' (defaults)' if options.sqlite_defaults else ' (WAL, IMMEDIATE)'
                print(row(label, values, note), flush=True)
                deliveries += values
    finally:
        controller.stop()
    if deliveries:
        print(
            row(
                'cron, once a minute (computed)',
                cron_latencies(count, statistics.median(deliveries)),
                'commits spread over the minute wait for the next run, + the median delivery above',
            )
        )
    print(
        row(
            'django-post_office 3.12.0 (documented)',
            [],
            'not measured: send_queued_mail from cron is the line above; with CELERY_ENABLED a Celery '
            'task per mail.send() (a broker round trip and a worker process, as our ENQUEUE_ON_SCHEDULE)',
        )
    )
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())

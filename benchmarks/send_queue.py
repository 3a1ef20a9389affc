"""Benchmark of the delivery loop: ``send_scheduled_messages()`` to a local SMTP sink.

Run from the repository root::

    .venv/bin/python benchmarks/send_queue.py [--sizes 1000,10000] [--db sqlite|postgres]

For each size N the queue is wiped, N e-mails are put in it with ``bulk_create`` (one
``Message`` row, built from an ``EmailTextMessage`` context, plus one ``Dispatch`` per
recipient: the rows ``schedule_messages()`` would write, without its per-message queries), and
the queue is sent twice: once timed (wall time, SQL queries, ``ru_maxrss``), and once again
under ``tracemalloc`` (its overhead would spoil the timing) for the peak of Python memory.

The SMTP sink (aiosmtpd) runs in a separate process and only counts messages, so its CPU and
memory stay out of the sender's numbers. The baseline sends N equivalent messages with plain
``smtplib`` over one connection to the same sink: the rate a Python sender cannot beat.
"""

from __future__ import annotations

import argparse
import cProfile
import multiprocessing
import os
import pstats
import resource
import shutil
import smtplib
import socket
import sys
import tempfile
import time
import tracemalloc
from email.utils import formatdate
from pathlib import Path

from query_counter import QueryCounter  # benchmarks/ is the script's directory, first on sys.path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

FROM_EMAIL = 'robot@example.com'
SUBJECT = 'Your weekly digest'
BODY = (
    'Hello,\n\nthis is the weekly digest of the things that happened on the site.\n'
    'Nothing much, really: a benchmark is running.\n\n-- \nThe robot\n'
)
SITE_URL = 'https://example.com'
PG_DATABASE = 'sitemessage_bench'


def address(index: int) -> str:
    return f'user{index}@example.com'


# SMTP sink: runs in its own process ------------------------------------------------------------


def _sink_main(port: int, counter, ready, stop) -> None:
    from aiosmtpd.controller import Controller

    class CountingHandler:
        async def handle_DATA(self, server, session, envelope):
            with counter.get_lock():
                counter.value += 1
            return '250 Message accepted for delivery'

    controller = Controller(CountingHandler(), hostname='127.0.0.1', port=port)
    controller.start()
    ready.set()
    try:
        stop.wait()
    finally:
        controller.stop()


class Sink:
    """The aiosmtpd sink process and its shared message counter."""

    def __init__(self):
        ctx = multiprocessing.get_context('spawn')  # a fresh interpreter: no Django, no copy of our memory
        self.port = free_port()
        self.counter = ctx.Value('q', 0)
        self._ready, self._stop = ctx.Event(), ctx.Event()
        self._process = ctx.Process(
            target=_sink_main, args=(self.port, self.counter, self._ready, self._stop), name='smtp-sink', daemon=True
        )

    def start(self) -> 'Sink':
        self._process.start()
        if not self._ready.wait(30):
            self.stop()
            raise RuntimeError('The SMTP sink process did not start within 30 s.')
        return self

    def stop(self) -> None:
        self._stop.set()
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)

    @property
    def received(self) -> int:
        return self.counter.value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# Raw smtplib baseline -------------------------------------------------------------------------------


def raw_smtplib_seconds(port: int, n: int, with_links: bool) -> float:
    """Send ``n`` messages like ours (same headers and body) over one connection; return the seconds."""
    body = BODY.replace('\n', '\r\n')
    unsubscribe = (
        (
            'List-Unsubscribe: <https://example.com/messages/unsubscribe/1/{i}/'
            '0123456789abcdef0123456789abcdef01234567/>\r\n'
            'List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n'
        )
        if with_links
        else ''
    )
    template = (
        'From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n'
        'Message-ID: <{i}.{stamp}@example.com>\r\n'
        + unsubscribe
        + 'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
        'MIME-Version: 1.0\r\n\r\n{body}'
    )
    started = time.perf_counter()
    stamp = time.time_ns()
    with smtplib.SMTP('127.0.0.1', port) as smtp:
        for i in range(n):
            to = address(i)
            data = template.format(
                sender=FROM_EMAIL, to=to, subject=SUBJECT, date=formatdate(localtime=True), i=i, stamp=stamp, body=body
            )
            smtp.sendmail(FROM_EMAIL, [to], data.encode())
    return time.perf_counter() - started


# Django set-up --------------------------------------------------------------------------------------


class URLConf:
    """ROOT_URLCONF: sitemessage's URLs (filled in after set-up), so e-mails carry signed links."""

    urlpatterns: list = []


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
        conn.execute(sql)


def configure_django(db: str, workdir: str, sink_port: int, batch_size, with_links: bool) -> None:
    import django
    from django.conf import settings

    if db == 'postgres':
        pg_admin(f'DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)')
        pg_admin(f'CREATE DATABASE {PG_DATABASE}')
        databases = {
            'default': {
                'ENGINE': 'django.db.backends.postgresql',
                'HOST': '127.0.0.1',
                'PORT': '5432',
                'USER': 'postgres',
                'PASSWORD': '',
                'NAME': PG_DATABASE,
            }
        }
    else:
        databases = {
            'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': os.path.join(workdir, 'bench.sqlite3')}
        }
    extra = {} if batch_size is None else {'SITEMESSAGE_SEND_BATCH_SIZE': batch_size}
    settings.configure(
        DEBUG=False,  # no connection.queries list growing in memory
        SECRET_KEY='sitemessage-benchmark',
        USE_TZ=True,
        INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage'],
        DATABASES=databases,
        DEFAULT_AUTO_FIELD='django.db.models.AutoField',
        ROOT_URLCONF=URLConf,
        DEFAULT_FROM_EMAIL=FROM_EMAIL,
        EMAIL_HOST='127.0.0.1',
        EMAIL_PORT=sink_port,
        SITEMESSAGE_SITE_URL=SITE_URL,
        **extra,
    )
    django.setup()
    from django.core.management import call_command

    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import get_sitemessage_urls, register_messenger_objects

    if with_links:
        URLConf.urlpatterns = get_sitemessage_urls()
    call_command('migrate', verbosity=0)
    register_messenger_objects(SMTPMessenger())


def drop_pg_database() -> None:
    try:
        from django.db import connections

        connections.close_all()
    except Exception:  # Django was not set up yet
        pass
    pg_admin(f'DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)')


# Queue helpers ----------------------------------------------------------------------------------------


def wipe_queue() -> None:
    from django.db import connection

    from sitemessage.models import Dispatch, DispatchError, Message

    with connection.cursor() as cursor:
        for model in (DispatchError, Dispatch, Message):
            cursor.execute(f'DELETE FROM {connection.ops.quote_name(model._meta.db_table)}')


def fill_queue(n: int, shape: str) -> None:
    """Put ``n`` e-mails in the queue: ``per-recipient`` = n messages of one dispatch each; ``one`` = 1 x n."""
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Dispatch, Message

    context = EmailTextMessage(SUBJECT, BODY).get_context()
    count = n if shape == 'per-recipient' else 1
    messages = Message.objects.bulk_create(
        [Message(cls=EmailTextMessage.get_alias(), context=context, dispatches_ready=True) for _ in range(count)],
        batch_size=1000,
    )
    if any(message.pk is None for message in messages):  # a backend without RETURNING
        messages = list(Message.objects.order_by('pk'))
    Dispatch.objects.bulk_create(
        [
            Dispatch(message=messages[i if shape == 'per-recipient' else 0], messenger='smtp', address=address(i))
            for i in range(n)
        ],
        batch_size=1000,
    )


def requeue() -> None:
    """Put every dispatch back to its never-attempted state (for the second, memory-measured run)."""
    from sitemessage.models import Dispatch, DispatchError

    DispatchError.objects.all().delete()
    Dispatch.objects.update(
        dispatch_status=Dispatch.DISPATCH_STATUS_PENDING,
        retry_count=0,
        message_cache=None,
        time_dispatched=None,
        claim_token=None,
        lease_until=None,
        next_attempt_at=None,
    )


class BenchmarkError(Exception):
    pass


def check_outcome(n: int, report, sink: Sink, sink_before: int, label: str) -> None:
    from django.db.models import Count

    from sitemessage.models import Dispatch

    statuses = dict(Dispatch.objects.values_list('dispatch_status').annotate(c=Count('pk')))
    sent = statuses.get(Dispatch.DISPATCH_STATUS_SENT, 0)
    received = sink.received - sink_before
    problems = []
    if sent != n:
        names = dict(Dispatch.DISPATCH_STATUSES)
        detail = ', '.join(f'{names[status]}: {count}' for status, count in sorted(statuses.items()))
        problems.append(f'{sent} of {n} dispatches are Sent ({detail})')
    if report.sent != n:
        problems.append(f'send_scheduled_messages() reported {report}')
    if received != n:
        problems.append(f'the SMTP sink received {received} messages, expected {n}')
    if problems:
        raise BenchmarkError(f'{label}, N={n}: ' + '; '.join(problems))


def send_measured(n: int, sink: Sink):
    """Timed run: wall time, queries and ru_maxrss of ``send_scheduled_messages()``."""
    from django.db import connection

    from sitemessage.sending import send_scheduled_messages

    counter = QueryCounter()
    sink_before = sink.received
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with connection.execute_wrapper(counter):
        started = time.perf_counter()
        report = send_scheduled_messages()
        seconds = time.perf_counter() - started
    rss_delta = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before  # KiB on Linux
    check_outcome(n, report, sink, sink_before, 'timed run')
    return seconds, counter.count, report.batches, rss_delta / 1024


def send_traced(n: int, sink: Sink) -> float:
    """Second run under tracemalloc: the peak of Python allocations during the send, in MB."""
    from sitemessage.sending import send_scheduled_messages

    sink_before = sink.received
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        report = send_scheduled_messages()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    check_outcome(n, report, sink, sink_before, 'tracemalloc run')
    return peak / 1e6


def run_size(n: int, shape: str, sink: Sink, with_links: bool, repeat: int) -> dict:
    """Fill the queue with ``n`` e-mails; time our send and the raw baseline (interleaved, best of ``repeat``)."""
    wipe_queue()
    started = time.perf_counter()
    fill_queue(n, shape)
    fill_seconds = time.perf_counter() - started
    best_seconds = best_raw = float('inf')
    for attempt in range(repeat):
        if attempt:
            requeue()
        seconds, queries, batches, rss_mb = send_measured(n, sink)
        if attempt == 0:
            first_rss_mb = rss_mb  # later runs only reuse memory the first one took
        best_seconds = min(best_seconds, seconds)
        sink_before = sink.received
        best_raw = min(best_raw, raw_smtplib_seconds(sink.port, n, with_links))
        if sink.received - sink_before != n:
            raise BenchmarkError(f'raw smtplib, N={n}: the sink received {sink.received - sink_before}, expected {n}')
    requeue()
    peak_mb = send_traced(n, sink)
    return {
        'n': n,
        'fill': fill_seconds,
        'seconds': best_seconds,
        'rate': n / best_seconds,
        'raw_rate': n / best_raw,
        'queries': queries,
        'batches': batches,
        'peak_mb': peak_mb,
        'rss_mb': first_rss_mb,
    }


def profile_send(n: int, shape: str, sink: Sink, top: int) -> None:
    from sitemessage.sending import send_scheduled_messages

    wipe_queue()
    fill_queue(n, shape)
    profiler = cProfile.Profile()
    profiler.enable()
    send_scheduled_messages()
    profiler.disable()
    print(f'\ncProfile of send_scheduled_messages(), N={n}: top {top} by own time')
    stats = pstats.Stats(profiler, stream=sys.stdout).strip_dirs().sort_stats('tottime')
    stats.print_stats(top)
    print(f'sitemessage functions by cumulative time (N={n})')
    stats = pstats.Stats(profiler, stream=sys.stdout).sort_stats('cumulative')
    stats.print_stats(r'sitemessage/(?!\.venv)', top)


# Output ---------------------------------------------------------------------------------------------

COLUMNS = [
    ('size', 'n', '{:d}'),
    ('our msgs/s', 'rate', '{:.0f}'),
    ('raw smtplib msgs/s', 'raw_rate', '{:.0f}'),
    ('ratio', 'ratio', '{:.2f}'),
    ('queries', 'queries', '{:d}'),
    ('queries/dispatch', 'qpd', '{:.3f}'),
    ('batches', 'batches', '{:d}'),
    ('queries/batch', 'qpb', '{:.1f}'),
    ('peak MB (tracemalloc)', 'peak_mb', '{:.2f}'),
    ('maxrss +MB', 'rss_mb', '{:.1f}'),
]


def print_table(rows: list) -> None:
    cells = [[title for title, _key, _fmt in COLUMNS]]
    for row in rows:
        row = dict(
            row, ratio=row['rate'] / row['raw_rate'], qpd=row['queries'] / row['n'], qpb=row['queries'] / row['batches']
        )
        cells.append([fmt.format(row[key]) for _title, key, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    for index, line in enumerate(cells):
        print(' | '.join(cell.rjust(width) for cell, width in zip(line, widths)))
        if index == 0:
            print('-+-'.join('-' * width for width in widths))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', default='1000,10000', help='comma-separated queue sizes (default: 1000,10000)')
    parser.add_argument(
        '--db',
        choices=['sqlite', 'postgres'],
        default='sqlite',
        help=f'SQLite file in a temp dir, or PostgreSQL at 127.0.0.1:5432 (user postgres, '
        f'database {PG_DATABASE}, created and dropped by the script)',
    )
    parser.add_argument(
        '--shape',
        choices=['per-recipient', 'one'],
        default='per-recipient',
        help='per-recipient: N messages of one dispatch each (default); one: 1 message, N dispatches',
    )
    parser.add_argument(
        '--batch-size', type=int, default=None, help='SITEMESSAGE_SEND_BATCH_SIZE (default: the library default)'
    )
    parser.add_argument(
        '--no-links', action='store_true', help='do not attach sitemessage URLs (no signed List-Unsubscribe links)'
    )
    parser.add_argument(
        '--repeat',
        type=int,
        default=1,
        help='timed runs of ours and of the baseline, interleaved; the best of each is shown '
        '(default: 1; use 3 on a busy machine)',
    )
    parser.add_argument(
        '--profile',
        action='store_true',
        help='afterwards, cProfile one send of the smallest size and print the hotspots',
    )
    parser.add_argument('--profile-top', type=int, default=25, help='rows of the profile listings (default: 25)')
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(size) for size in args.sizes.split(',') if size.strip()})
    except ValueError:
        parser.error(f'--sizes must be comma-separated whole numbers, got {args.sizes!r}')
    if args.repeat < 1:
        parser.error('--repeat must be at least 1')
    if not args.sizes or args.sizes[0] < 1:
        parser.error('--sizes must hold at least one positive size')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with_links = not args.no_links
    workdir = tempfile.mkdtemp(prefix='sitemessage-bench-')
    sink = Sink().start()
    try:
        configure_django(args.db, workdir, sink.port, args.batch_size, with_links)
        from django.db import connection

        from sitemessage.settings import get_setting

        # Warm-up: imports, URL resolver, first connections are not part of any measurement.
        wipe_queue()
        fill_queue(20, args.shape)
        send_measured(20, sink)

        print(
            f'sitemessage send benchmark: db={connection.vendor}, shape={args.shape}, '
            f'links={"yes" if with_links else "no"}, batch size (SITEMESSAGE_SEND_BATCH_SIZE)='
            f'{get_setting("SEND_BATCH_SIZE")}, queue filled with bulk_create, best of {args.repeat} '
            f'timed run(s), load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs'
        )
        rows = []
        for n in args.sizes:
            row = run_size(n, args.shape, sink, with_links, args.repeat)
            rows.append(row)
            print(f'  N={n}: filled in {row["fill"]:.1f} s, sent in {row["seconds"]:.2f} s', flush=True)
        print()
        print_table(rows)
        small, large = rows[0], rows[-1]
        print()
        print(
            f'Peak memory (tracemalloc) at N={large["n"]} vs N={small["n"]}: {large["peak_mb"]:.2f} MB / '
            f'{small["peak_mb"]:.2f} MB = {large["peak_mb"] / small["peak_mb"]:.2f}x '
            f'(queue {large["n"] / small["n"]:.0f}x larger); batch size used: {get_setting("SEND_BATCH_SIZE")}'
        )
        if args.profile:
            profile_send(small['n'], args.shape, sink, args.profile_top)
    except BenchmarkError as error:
        print(f'\nBENCHMARK FAILED: {error}', file=sys.stderr)
        return 1
    finally:
        sink.stop()
        if args.db == 'postgres':
            drop_pg_database()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())

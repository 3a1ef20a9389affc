"""The claim query on a large queue: its PostgreSQL plan (no sequential scan of the dispatches) and its time.

Run from the repository root (PostgreSQL at 127.0.0.1:5432, user ``postgres``, no password)::

    .venv/bin/python benchmarks/claim_plan.py                 # 1,000,000 queued dispatches
    .venv/bin/python benchmarks/claim_plan.py --rows 200000   # fewer, on a busy machine

It creates the database ``sitemessage_claim_bench`` (dropping an existing one), migrates it, fills
the queue with one ``INSERT ... SELECT generate_series`` (send-at, retry and expiry times mixed in,
see :func:`fill`), runs ``ANALYZE``, prints ``EXPLAIN (ANALYZE, BUFFERS)`` of the query a claim
picks from (``DispatchQuerySet.claim_candidates()``, ``FOR UPDATE SKIP LOCKED`` as the claim runs
it) and times whole claims of ``SITEMESSAGE_SEND_BATCH_SIZE`` (200) dispatches, each released
again. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

PG_DATABASE = 'sitemessage_claim_bench'
MESSAGES = 1000


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
        conn.execute(sql)


def configure_django() -> None:
    import django
    from django.conf import settings

    pg_admin(f'DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)')
    pg_admin(f'CREATE DATABASE {PG_DATABASE}')
    settings.configure(
        DEBUG=False,
        SECRET_KEY='sitemessage-benchmark',
        USE_TZ=True,
        INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage'],
        DATABASES={
            'default': {
                'ENGINE': 'django.db.backends.postgresql',
                'HOST': '127.0.0.1',
                'PORT': '5432',
                'USER': 'postgres',
                'PASSWORD': '',
                'NAME': PG_DATABASE,
            }
        },
        DEFAULT_AUTO_FIELD='django.db.models.AutoField',
        SITEMESSAGE_SITE_URL='https://bench.example.com',
    )
    django.setup()
    from django.core.management import call_command

    call_command('migrate', verbosity=0)


def fill(connection, rows: int, deferred: int = 0) -> None:
    """Queue ``rows`` dispatches of :data:`MESSAGES` messages in two ``INSERT ... SELECT`` statements.

    Row ``i`` (the queue is mixed all the way through, so the oldest rows are not simply the due ones):
    ``i % 4 == 0`` pending with a ``send_at`` an hour ahead (``next_attempt_at``); ``1`` pending, no
    time; ``2`` pending, ``send_at`` passed; ``3`` in error, retried in ten minutes. Every fifth row
    expires in a day, and every thousandth expired a minute ago (a claim fails those as "expired").
    The first ``deferred`` rows instead are all due tomorrow: a large mailing scheduled for later
    ahead of everything due now.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO sitemessage_message
                (time_created, cls, gmark, context, priority, dispatches_ready, send_at, expires_at, digest_key)
            SELECT now(), 'email_plain', '', '{"subject": "Hello", "stext_": "Hi"}', 0, true, NULL, NULL, ''
            FROM generate_series(1, %s)
            """,
            [MESSAGES],
        )
        cursor.execute(
            """
            INSERT INTO sitemessage_dispatch
                (time_created, message_id, messenger, address, retry_count, dispatch_status, read_status,
                 next_attempt_at, expires_at)
            SELECT now() - interval '1 hour' + i * interval '1 millisecond',
                   (SELECT min(id) FROM sitemessage_message) + i %% %s,
                   'smtp', 'user' || i || '@example.com',
                   CASE WHEN i %% 4 = 3 THEN 1 ELSE 0 END,
                   CASE WHEN i %% 4 = 3 THEN 3 ELSE 1 END,
                   0,
                   CASE WHEN i <= %s THEN now() + interval '1 day'
                        ELSE CASE i %% 4 WHEN 0 THEN now() + interval '1 hour'
                               WHEN 1 THEN NULL
                               WHEN 2 THEN now() - interval '1 minute'
                               ELSE now() + interval '10 minutes' END END,
                   CASE WHEN i %% 1000 = 5 THEN now() - interval '1 minute'
                        WHEN i %% 5 = 0 THEN now() + interval '1 day' END
            FROM generate_series(1, %s) AS i
            """,
            [MESSAGES, deferred, rows],
        )
        cursor.execute('ANALYZE sitemessage_message')
        cursor.execute('ANALYZE sitemessage_dispatch')


def claim_plan(connection, limit: int = 200) -> str:
    """``EXPLAIN (ANALYZE, BUFFERS)`` of the query a claim picks its dispatches with, as a claim runs it."""
    from django.db import transaction
    from django.utils import timezone

    from sitemessage.models import Dispatch

    with transaction.atomic(using=connection.alias):
        query = Dispatch.objects.using(connection.alias).claim_candidates(timezone.now())
        query = query.select_for_update(skip_locked=True, of=('self',))[:limit]
        sql, params = query.query.get_compiler(connection.alias).as_sql()
        with connection.cursor() as cursor:
            cursor.execute(f'EXPLAIN (ANALYZE, BUFFERS) {sql}', params)
            plan = '\n'.join(row[0] for row in cursor.fetchall())
        transaction.set_rollback(True, using=connection.alias)  # EXPLAIN ANALYZE took the row locks
    return plan


def time_claims(repeat: int) -> list:
    """Seconds of whole claims (pick, expire, mark, load the batch); each batch is released after."""
    from sitemessage.models import Dispatch

    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        batch = Dispatch.get_unsent()
        seconds.append(time.perf_counter() - started)
        if not batch:
            raise RuntimeError('the claim found nothing to send')
        Dispatch.objects.release(batch)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=1_000_000, help='queued dispatches (default 1,000,000)')
    parser.add_argument(
        '--deferred', type=int, default=0, help='the oldest rows all sent tomorrow: how many (default 0)'
    )
    parser.add_argument('--repeat', type=int, default=10, help='claims timed (default 10)')
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    configure_django()
    try:
        from django.db import connection

        from sitemessage.models import Dispatch

        started = time.perf_counter()
        fill(connection, args.rows, args.deferred)
        took = time.perf_counter() - started
        print(f'Filled {args.rows:,} dispatches ({args.deferred:,} oldest deferred) and analyzed in {took:.1f} s')
        print(f'Plan of the claim query (first of {args.rows:,}):\n{claim_plan(connection)}\n')
        seconds = time_claims(args.repeat)
        expired = Dispatch.objects.filter(dispatch_status=Dispatch.DISPATCH_STATUS_FAILED).count()
        print(
            f'Claim of 200 (pick + mark + load, released after): median {statistics.median(seconds) * 1000:.1f} ms, '
            f'best {min(seconds) * 1000:.1f} ms over {len(seconds)} claims; {expired} expired dispatches failed'
        )
    finally:
        from django.db import connections

        connections.close_all()
        pg_admin(f'DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)')


if __name__ == '__main__':
    main()

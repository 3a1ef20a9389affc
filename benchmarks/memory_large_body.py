"""Peak memory of one delivery run of a large templated HTML e-mail: 5 MB x 40 recipients against 5 MB x 1.

Run from the repository root::

    .venv/bin/python benchmarks/memory_large_body.py [--mb 5] [--recipients 40] [--db sqlite|postgres]

Each case runs in two fresh subprocesses: one schedules the e-mail (``EmailHtmlMessage`` with a
``contents`` of the given size, rendered by the default template with its unsubscribe and
mark-read links, so every recipient's text differs), one runs ``send_scheduled_messages()``
once and reports how much its peak RSS (``resource.getrusage(RUSAGE_SELF).ru_maxrss``) grew
during the run. The SMTP sink (aiosmtpd) runs in this process and discards what it receives.
Target (issue 9, item 7): the many-recipients case costs less than 3x the one-recipient case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MARK = '@@memory-result@@ '
PG_DATABASE = 'sitemessage_bench_memory'


class URLConf:
    urlpatterns: list = []


def _configure(db: str, path: str, port: int) -> None:
    import django
    from django.conf import settings

    if db == 'postgres':
        database = {
            'ENGINE': 'django.db.backends.postgresql',
            'HOST': '127.0.0.1',
            'PORT': '5432',
            'USER': 'postgres',
            'PASSWORD': '',
            'NAME': path,
        }
    else:
        database = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': path}
    settings.configure(
        DEBUG=False,
        SECRET_KEY='sitemessage-benchmark',
        USE_TZ=True,
        INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage'],
        DATABASES={'default': database},
        DEFAULT_AUTO_FIELD='django.db.models.AutoField',
        ROOT_URLCONF=URLConf,
        TEMPLATES=[{'BACKEND': 'django.template.backends.django.DjangoTemplates', 'APP_DIRS': True}],
        DEFAULT_FROM_EMAIL='robot@example.com',
        EMAIL_HOST='127.0.0.1',
        EMAIL_PORT=port,
        SITEMESSAGE_SITE_URL='https://example.com',
        SITEMESSAGE_SEND_BATCH_SIZE=200,
    )
    django.setup()
    from sitemessage.messengers.smtp import SMTPMessenger
    from sitemessage.toolbox import get_sitemessage_urls, register_messenger_objects

    URLConf.urlpatterns = get_sitemessage_urls()
    register_messenger_objects(SMTPMessenger(timeout=60))


def body(megabytes: float) -> str:
    """HTML paragraphs (with markup, as a newsletter has) of about ``megabytes`` MB."""
    paragraph = (
        '<p>Line {n}: the weekly digest of <b>everything</b> that happened on the site, '
        'with <a href="https://example.com/item/{n}">a link</a> to each item.</p>\n'
    )
    parts, size, n = [], 0, 0
    while size < megabytes * 1024 * 1024:
        part = paragraph.format(n=n)
        parts.append(part)
        size += len(part)
        n += 1
    return ''.join(parts)


def child_prepare(db: str, path: str, port: int, megabytes: float, recipients: int) -> dict:
    _configure(db, path, port)
    from django.core.management import call_command

    from sitemessage.messages.email import EmailHtmlMessage
    from sitemessage.toolbox import recipients as to
    from sitemessage.toolbox import schedule_messages

    call_command('migrate', verbosity=0)
    schedule_messages(
        EmailHtmlMessage('Large newsletter', {'contents': body(megabytes)}),
        to('smtp', [f'reader{n}@example.com' for n in range(recipients)]),
    )
    return {'scheduled': recipients}


def child_measure(db: str, path: str, port: int) -> dict:
    _configure(db, path, port)
    import gc

    from sitemessage.models import Dispatch
    from sitemessage.sending import send_scheduled_messages

    Dispatch.objects.count()  # connect, load the models
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    report = send_scheduled_messages()
    seconds = time.monotonic() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        'sent': report.sent,
        'errors': report.errors,
        'failed': report.failed,
        'seconds': seconds,
        'before_mb': before / 1024,
        'peak_mb': peak / 1024,
        'growth_mb': (peak - before) / 1024,
    }


def _child(argv) -> None:
    kind, db, path, port, *rest = argv
    if kind == 'prepare':
        result = child_prepare(db, path, int(port), float(rest[0]), int(rest[1]))
    else:
        result = child_measure(db, path, int(port))
    print(MARK + json.dumps(result), flush=True)


# The parent: sink, databases, subprocesses --------------------------------------------------------------


class DiscardingSink:
    def __init__(self):
        self.received = 0
        self.sizes = []

    async def handle_DATA(self, server, session, envelope):
        self.received += len(envelope.rcpt_tos)
        self.sizes.append(len(envelope.content))
        envelope.content = envelope.original_content = b''
        return '250 Message accepted for delivery'


def _run_child(*args) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, '--child', *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={
            **os.environ,
            'PYTHONPATH': os.pathsep.join(
                filter(None, [str(REPO), str(Path(__file__).parent), os.environ.get('PYTHONPATH')])
            ),
        },
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARK)]
    if result.returncode != 0 or not lines:
        raise SystemExit(f'child {args[0]} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}')
    return json.loads(lines[-1][len(MARK) :])


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _pg(sql: str) -> None:
    import psycopg

    with psycopg.connect(host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True) as conn:
        conn.execute(sql)


def measure(db: str, port: int, megabytes: float, recipients: int, workdir: str) -> dict:
    if db == 'postgres':
        path = PG_DATABASE
        _pg(f'DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)')
        _pg(f'CREATE DATABASE {PG_DATABASE}')
    else:
        path = os.path.join(workdir, f'memory-{recipients}.sqlite3')
    try:
        _run_child('prepare', db, path, port, megabytes, recipients)
        return _run_child('measure', db, path, port)
    finally:
        if db == 'postgres':
            _pg(f'DROP DATABASE IF EXISTS {PG_DATABASE} WITH (FORCE)')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mb', type=float, default=5.0, help='size of the e-mail body in MB (default 5)')
    parser.add_argument('--recipients', type=int, default=40, help='recipients of the large case (default 40)')
    parser.add_argument('--db', choices=('sqlite', 'postgres'), default='sqlite')
    parser.add_argument(
        '--limit', type=float, default=3.0, help='the target: at most this many times the 1-recipient growth'
    )
    args = parser.parse_args(argv)

    from aiosmtpd.controller import Controller

    sink = DiscardingSink()
    controller = Controller(sink, hostname='127.0.0.1', port=free_port(), data_size_limit=0)
    controller.start()
    try:
        with tempfile.TemporaryDirectory() as workdir:
            results = {n: measure(args.db, controller.port, args.mb, n, workdir) for n in (1, args.recipients)}
    finally:
        controller.stop()

    one, many = results[1], results[args.recipients]
    print(f'Peak RSS growth of one send_scheduled_messages() run, templated HTML e-mail of {args.mb:g} MB, {args.db}:')
    for n, result in results.items():
        print(
            f'  {n:>3} recipient(s): +{result["growth_mb"]:7.1f} MB (peak {result["peak_mb"]:.1f} MB), '
            f'sent {result["sent"]}, failed {result["failed"]}, errors {result["errors"]}, {result["seconds"]:.1f} s'
        )
    ratio = many['growth_mb'] / max(one['growth_mb'], 1.0)
    passed = ratio < args.limit and many['sent'] == args.recipients and one['sent'] == 1
    print(f'  ratio {args.recipients}/1: {ratio:.2f}x (target < {args.limit:g}x): {"PASS" if passed else "FAIL"}')
    print(f'  the sink received {sink.received} e-mails, largest {max(sink.sizes or [0]) / 1e6:.1f} MB')
    return 0 if passed else 1


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--child':
        _child(sys.argv[2:])
    else:
        sys.exit(main())

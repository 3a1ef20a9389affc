"""Side by side: sitemessage 2.0 against raw smtplib, django-sitemessage 1.4.0, django-post_office, django-mailer.

Run from the repository root::

    .venv/bin/python benchmarks/compare.py [--quick] [--db sqlite|postgres|both]

Every figure is measured in the same run, against the same local SMTP sink (a pool of aiosmtpd
processes behind a dispatcher, see ``Sink``), on a throw-away database per library and engine (SQLite files in a
temporary directory; PostgreSQL databases at 127.0.0.1:5432, user ``postgres``, created and
dropped by the script). The baselines run in their own virtualenvs, created under
``benchmarks/`` with pip on first use; each measurement runs in a fresh subprocess
(``compare.py --child``) of the library's interpreter, configured by a minimal settings dict.

Scenarios (see benchmarks/README.rst for what each one measures and why):

1. zero-latency SMTP server: msgs/s;
2. SMTP server answering each message after 20 ms: msgs/s;
3. 1k, 10k (and 100k in the full run) queued: peak memory and SQL queries per sent dispatch;
4. scheduling 10k e-mails in one call against a raw ``bulk_create`` of the same rows;
5. 4 worker processes sharing one queue: duplicates, lost;
6. SIGKILL of one of 2 workers mid-run, then one more run after the lease.

Tables go to stdout, progress to stderr. Each row that has a target from issue 4 says PASS or FAIL.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from email.utils import formatdate
from pathlib import Path

from query_counter import QueryCounter  # benchmarks/ is the script's directory, first on sys.path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULT_MARK = '@@compare-result@@ '

# The e-mail every contender sends: the same as benchmarks/send_queue.py.
FROM_EMAIL = 'robot@example.com'
SUBJECT = 'Your weekly digest'
BODY = (
    'Hello,\n\nthis is the weekly digest of the things that happened on the site.\n'
    'Nothing much, really: a benchmark is running.\n\n-- \nThe robot\n'
)
SITE_URL = 'https://example.com'
WARM_UP = 20  # e-mails sent by each sending process before it is measured (imports, first queries)


def address(prefix: str, index: int) -> str:
    return f'{prefix}{index}@example.com'


# Libraries ---------------------------------------------------------------------------------------------


class Lib:
    """A contender: its label, virtualenv (None: the interpreter running this script) and Django app."""

    def __init__(self, key, label, app, venv=None, packages=(), check=''):
        self.key, self.label, self.app = key, label, app
        self.venv, self.packages, self.check = venv, list(packages), check
        self.error = None  # why it cannot run, if it cannot
        self.versions = ''

    @property
    def python(self) -> str:
        return sys.executable if self.venv is None else str(self.venv / 'bin' / 'python')

    def ensure(self) -> bool:
        """Create the virtualenv and install the packages on first use; return whether the library runs."""
        if self.venv is not None and not self._works():
            progress(f'Creating {self.venv.relative_to(REPO)} (pip install {" ".join(self.packages)}) ...')
            try:
                if not (self.venv / 'bin' / 'python').exists():
                    subprocess.run(
                        [sys.executable, '-m', 'venv', str(self.venv)],
                        check=True,
                        capture_output=True,
                        text=True,
                        timeout=300,
                    )
                subprocess.run(
                    [self.python, '-m', 'pip', 'install', '-q', '--disable-pip-version-check', *self.packages],
                    check=True,
                    capture_output=True,
                    text=True,
                    timeout=900,
                )
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as error:
                details = getattr(error, 'stderr', '') or ''
                self.error = f'could not install {" ".join(self.packages)}: {error} {details.strip()[-500:]}'
                return False
            if not self._works():
                self.error = f'{self.venv} was created but `{self.check}` fails in it'
                return False
        if self.venv is None and not self._works():
            self.error = f'`{self.check}` fails with {self.python}'
        return self.error is None

    def _works(self) -> bool:
        code = (
            f'import sys, django; {self.check}; '
            f'print("Django", django.get_version(), "/ Python", sys.version.split()[0])'
        )
        env = child_env(self.key)
        result = (
            subprocess.run([self.python, '-c', code], capture_output=True, text=True, env=env, cwd=HERE, timeout=120)
            if Path(self.python).exists()
            else None
        )
        if result is None or result.returncode:
            return False
        self.versions = result.stdout.strip()
        return True


LIBS = {
    'ours': Lib('ours', 'sitemessage 2.0 (this repo)', 'sitemessage', check='import sitemessage'),
    'sm140': Lib(
        'sm140',
        'django-sitemessage 1.4.0',
        'sitemessage',
        HERE / '.venv-sitemessage-1.4.0',
        ['django-sitemessage==1.4.0', 'django>=4.1,<4.2', 'psycopg2-binary', 'aiosmtpd'],
        check='import importlib.metadata as m; assert m.version("django-sitemessage") == "1.4.0"; '
        'import sitemessage; assert "site-packages" in sitemessage.__file__',
    ),
    'post_office': Lib(
        'post_office',
        'django-post_office 3.12.0',
        'post_office',
        HERE / '.venv-post_office',
        ['django-post_office==3.12.0', 'django>=5.2,<5.3', 'psycopg2-binary'],
        check='import importlib.metadata as m; assert m.version("django-post_office") == "3.12.0"',
    ),
    'mailer': Lib(
        'mailer',
        'django-mailer 2.3.2',
        'mailer',
        HERE / '.venv-mailer',
        ['django-mailer==2.3.2', 'django>=5.2,<5.3', 'psycopg2-binary'],
        check='import importlib.metadata as m; assert m.version("django-mailer") == "2.3.2"',
    ),
}


def child_env(lib_key: str) -> dict:
    env = {key: value for key, value in os.environ.items() if key not in ('PYTHONPATH', 'DJANGO_SETTINGS_MODULE')}
    if lib_key in ('ours', 'raw'):
        env['PYTHONPATH'] = str(REPO)  # this repo's sitemessage; never on the path of the baselines
    env['PYTHONUNBUFFERED'] = '1'
    return env


# The SMTP sink: a process of its own ----------------------------------------------------------------

SINK_PROCESSES = int(os.environ.get('BENCH_SINK_PROCESSES', 24))  # a pool, as Postfix keeps smtpd processes


def _sink_main(channel, conn) -> None:
    """One sink process: aiosmtpd sessions on the connections the dispatcher hands over, commands from a pipe."""
    import asyncio
    import threading
    from collections import Counter

    from aiosmtpd.smtp import SMTP

    lock = threading.Lock()
    state = {'delay': 0.0, 'total': 0, 'counts': Counter()}

    class Handler:
        async def handle_EHLO(self, server, session, envelope, hostname, responses):
            # Production relays (Postfix, Exim, SES, Gmail) all offer RFC 2920 pipelining;
            # aiosmtpd processes pipelined commands in order but does not say so by itself.
            session.host_name = hostname
            return responses[:-1] + ['250-PIPELINING', responses[-1]]

        async def handle_DATA(self, server, session, envelope):
            with lock:  # counted on receipt: a sender killed while waiting for the reply still delivered it
                state['total'] += 1
                state['counts'].update(envelope.rcpt_tos)
            if state['delay']:
                await asyncio.sleep(state['delay'])
            return '250 Message accepted for delivery'

    class Session(SMTP):
        def connection_lost(self, error):
            super().connection_lost(error)
            channel.send(b'x')  # tells the dispatcher this process is free again

    def serve(loop_ready):
        async def main():
            loop = asyncio.get_running_loop()

            def start(fd):
                sock = socket.socket(fileno=fd)
                loop.create_task(loop.connect_accepted_socket(lambda: Session(Handler(), hostname='sink'), sock))

            def receive():
                while True:
                    _data, fds, _flags, _address = socket.recv_fds(channel, 1, 1)
                    if not fds:
                        return
                    loop.call_soon_threadsafe(start, fds[0])

            threading.Thread(target=receive, daemon=True).start()
            loop_ready.set()
            await asyncio.Event().wait()

        asyncio.run(main())

    ready = threading.Event()
    threading.Thread(target=serve, args=(ready,), daemon=True).start()
    if not ready.wait(30):
        raise RuntimeError('the sink process could not start its event loop')
    conn.send('ready')
    while True:
        command, argument = conn.recv()
        if command == 'stop':
            break
        with lock:
            if command == 'delay':
                state['delay'] = argument
            elif command == 'reset':
                state['total'], state['counts'] = 0, Counter()
            conn.send((state['total'], dict(state['counts']) if command == 'counts' else None))


class Sink:
    """An SMTP server (aiosmtpd) counting messages and recipients, which may answer DATA late.

    Built as a production relay is: Postfix's master process accepts each connection and hands
    it to an smtpd process of its pool that has no session. Here a dispatcher thread accepts and
    passes the socket to the least busy of ``SINK_PROCESSES`` spawned processes, each running
    aiosmtpd on its own event loop. So a session's round trips never wait for another session's
    turn: with one aiosmtpd process, 8 concurrent sessions each saw about 2.5 ms more per
    message at 20 ms, which no client could make up for.
    """

    def __init__(self, processes: int = SINK_PROCESSES):
        import multiprocessing

        ctx = multiprocessing.get_context('spawn')
        self._listener = socket.create_server(('127.0.0.1', 0), backlog=128)
        self.port = self._listener.getsockname()[1]
        self._conns, self._channels, self._processes = [], [], []
        for index in range(processes):
            parent_conn, child_conn = ctx.Pipe()
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            self._conns.append(parent_conn)
            self._channels.append(ours)
            self._processes.append(
                ctx.Process(target=_sink_main, args=(theirs, child_conn), name=f'smtp-sink-{index}', daemon=True)
            )
        self._active = [0] * processes
        self._stopping = False

    def start(self) -> 'Sink':
        import threading

        for process in self._processes:
            process.start()
        for conn in self._conns:
            if not conn.poll(30) or conn.recv() != 'ready':
                raise RuntimeError('The SMTP sink did not start within 30 s.')
        threading.Thread(target=self._dispatch, name='smtp-sink-dispatcher', daemon=True).start()
        return self

    def _dispatch(self) -> None:
        """Accept connections; give each to the process with the fewest sessions (usually none)."""
        import selectors

        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, None)
        for index, channel in enumerate(self._channels):
            selector.register(channel, selectors.EVENT_READ, index)
        while not self._stopping:
            for key, _events in selector.select(timeout=0.5):
                if key.data is None:
                    client, _address = self._listener.accept()
                    index = min(range(len(self._active)), key=self._active.__getitem__)
                    socket.send_fds(self._channels[index], [b'c'], [client.fileno()])
                    client.close()
                    self._active[index] += 1
                else:
                    self._active[key.data] -= len(key.fileobj.recv(1024))

    def _ask(self, command, argument=None) -> list:
        for conn in self._conns:
            conn.send((command, argument))
        return [conn.recv() for conn in self._conns]

    def set_delay(self, seconds: float) -> None:
        self._ask('delay', seconds)

    def reset(self) -> None:
        self._ask('reset')

    @property
    def total(self) -> int:
        return sum(total for total, _counts in self._ask('total'))

    def counts(self) -> dict:
        merged = Counter()
        for _total, counts in self._ask('counts'):
            merged.update(counts)
        return dict(merged)

    def stop(self) -> None:
        self._stopping = True
        for conn, process in zip(self._conns, self._processes):
            if process.is_alive():
                try:
                    conn.send(('stop', None))
                except (OSError, EOFError):
                    pass
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.terminate()
        self._listener.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


# Child processes --------------------------------------------------------------------------------------


class ChildError(Exception):
    pass


class Run:
    """The options shared by every child of one engine: database names, sink port, temp dir."""

    def __init__(self, engine: str, workdir: Path, port: int):
        self.engine, self.workdir, self.port = engine, workdir, port
        self.suffix = f'{os.getpid()}'

    def db(self, lib_key: str) -> dict:
        if self.engine == 'postgres':
            return {'engine': 'postgres', 'name': f'sm_cmp_{lib_key}_{self.suffix}'}
        return {'engine': 'sqlite', 'name': str(self.workdir / f'{lib_key}.sqlite3')}

    def spec(self, lib_key: str, task: str, **options) -> dict:
        return {
            'lib': lib_key,
            'task': task,
            'db': self.db(lib_key if lib_key != 'raw' else 'ours'),
            'port': self.port,
            'workdir': str(self.workdir),
            **options,
        }

    def command(self, lib_key: str, task: str, **options) -> list:
        python = LIBS['ours'].python if lib_key == 'raw' else LIBS[lib_key].python
        return [python, str(Path(__file__).resolve()), '--child', json.dumps(self.spec(lib_key, task, **options))]

    def child(self, lib_key: str, task: str, timeout: float = 7200, **options) -> dict:
        """Run a child to completion and return its result."""
        try:
            result = subprocess.run(
                self.command(lib_key, task, **options),
                capture_output=True,
                text=True,
                timeout=timeout,
                env=child_env(lib_key),
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired:
            raise ChildError(f'{lib_key} {task}: no result within {timeout:.0f} s') from None
        return parse_child(lib_key, task, result.returncode, result.stdout, result.stderr)

    def start(self, lib_key: str, task: str, name: str, **options) -> 'Started':
        log = self.workdir / f'{name}.log'
        with open(log, 'w') as stream:
            popen = subprocess.Popen(
                self.command(lib_key, task, **options),
                stdout=stream,
                stderr=subprocess.STDOUT,
                text=True,
                env=child_env(lib_key),
                cwd=self.workdir,
            )
        return Started(lib_key, task, popen, log)


class Started:
    def __init__(self, lib_key, task, popen, log):
        self.lib_key, self.task, self.popen, self.log = lib_key, task, popen, log

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f'/proc/{self.popen.pid}/stat').read_text().rsplit(')', 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')
        except (OSError, IndexError, ValueError):
            return 0.0

    def result(self, timeout: float) -> dict:
        self.popen.wait(timeout)
        output = self.log.read_text(errors='replace')
        return parse_child(self.lib_key, self.task, self.popen.returncode, output, output)


def parse_child(lib_key, task, returncode, stdout, stderr) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result = json.loads(line[len(RESULT_MARK) :])
            if returncode == 0:
                return result
    tail = '\n'.join(stderr.strip().splitlines()[-12:])
    raise ChildError(f'{lib_key} {task} exited {returncode}: {tail}')


def child_main(spec: dict) -> None:
    lib = spec['lib']
    if lib != 'ours' and lib != 'raw':
        sys.path[:] = [entry for entry in sys.path if entry and Path(entry).resolve() != REPO]
    if lib != 'raw':
        configure_django(spec)
    result = TASKS[spec['task']](spec)
    print(RESULT_MARK + json.dumps(result), flush=True)


class URLConf:
    """ROOT_URLCONF of the sitemessage children: their own URLs, so e-mails carry unsubscribe links."""

    urlpatterns: list = []


def configure_django(spec: dict) -> None:
    if spec.get('settings', {}).get('BENCH_PSYCOPG2'):  # as a project on psycopg2 (1.4.0's driver): hide psycopg 3
        sys.modules['psycopg'] = None  # type: ignore[assignment]
    import django
    from django.conf import settings

    db = spec['db']
    if db['engine'] == 'postgres':
        database = {
            'ENGINE': 'django.db.backends.postgresql',
            'HOST': '127.0.0.1',
            'PORT': '5432',
            'USER': 'postgres',
            'PASSWORD': '',
            'NAME': db['name'],
        }
    else:
        # Several worker processes share the file: a writer waits for the lock up to 60 s.
        database = {'ENGINE': 'django.db.backends.sqlite3', 'NAME': db['name'], 'OPTIONS': {'timeout': 60}}
    lib = spec['lib']
    settings.configure(
        DEBUG=False,
        SECRET_KEY='sitemessage-comparison',
        USE_TZ=True,
        INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', LIBS[lib].app],
        DATABASES={'default': database},
        DEFAULT_AUTO_FIELD='django.db.models.AutoField',
        ROOT_URLCONF=URLConf,
        TEMPLATES=[{'BACKEND': 'django.template.backends.django.DjangoTemplates', 'APP_DIRS': True}],
        DEFAULT_FROM_EMAIL=FROM_EMAIL,
        SERVER_EMAIL=FROM_EMAIL,  # 1.4.0's SMTPMessenger sends from SERVER_EMAIL
        EMAIL_HOST='127.0.0.1',
        EMAIL_PORT=spec['port'],
        SITEMESSAGE_SITE_URL=SITE_URL,
        MAILER_LOCK_PATH=str(Path(spec['workdir']) / 'mailer'),
        **spec.get('settings', {}),
    )
    django.setup()
    if lib in ('ours', 'sm140'):
        from sitemessage.messengers.smtp import SMTPMessenger
        from sitemessage.toolbox import get_sitemessage_urls, register_messenger_objects

        URLConf.urlpatterns = get_sitemessage_urls()
        connections = spec.get('connections', 1)
        if lib == 'ours':  # BENCH_SMTP_PIPELINING=False: as if the server did not offer PIPELINING
            pipelining = spec.get('settings', {}).get('BENCH_SMTP_PIPELINING', True)
            messenger = SMTPMessenger(connections=connections, pipelining=pipelining)
            if not spec.get('settings', {}).get('BENCH_OWN_THREAD', True):  # as before 2.0's issue 14: inline
                messenger.deliver_on_own_thread = False
            register_messenger_objects(messenger)
        else:
            register_messenger_objects(SMTPMessenger())


# Child tasks ------------------------------------------------------------------------------------------


def task_migrate(spec):
    from django.core.management import call_command

    call_command('migrate', verbosity=0)
    return {}


def wipe(lib: str) -> None:
    from django.apps import apps
    from django.db import connection, transaction

    models = apps.get_app_config(LIBS[lib].app).get_models(include_auto_created=True)
    tables = [connection.ops.quote_name(model._meta.db_table) for model in models]
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == 'postgresql':
            cursor.execute(f'TRUNCATE {", ".join(tables)} RESTART IDENTITY CASCADE')
        else:  # foreign keys are checked at commit (deferred): the order of the deletes does not matter
            for table in tables:
                cursor.execute(f'DELETE FROM {table}')


def task_fill(spec):
    """Wipe the library's tables; queue ``warm`` warm-up e-mails, then ``n`` e-mails (one per recipient)."""
    lib, n, warm, prefix = spec['lib'], spec['n'], spec.get('warm', 0), spec.get('prefix', 'user')
    wipe(lib)
    started = time.perf_counter()
    if lib in ('ours', 'sm140'):
        fill_sitemessage([address('warm', i) for i in range(warm)], priority=1)
        fill_sitemessage([address(prefix, i) for i in range(n)], priority=0)
    elif lib == 'post_office':
        from post_office.models import PRIORITY, STATUS, Email

        Email.objects.bulk_create(
            [
                Email(
                    from_email=FROM_EMAIL,
                    to=[address(prefix, i)],
                    subject=SUBJECT,
                    message=BODY,
                    status=STATUS.queued,
                    priority=PRIORITY.medium,
                )
                for i in range(n)
            ],
            batch_size=1000,
        )
    elif lib == 'mailer':
        from django.core.mail import EmailMessage
        from mailer.models import Message

        for group, count in (('warm', warm), (prefix, n)):
            Message.objects.bulk_create(
                [Message(email=EmailMessage(SUBJECT, BODY, FROM_EMAIL, [address(group, i)])) for i in range(count)],
                batch_size=1000,
            )
    return {'seconds': time.perf_counter() - started}


def fill_sitemessage(addresses, priority: int) -> None:
    """The rows ``schedule_messages()`` writes for one ``EmailTextMessage`` per recipient (both versions)."""
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Dispatch, Message

    if not addresses:
        return
    context = EmailTextMessage(SUBJECT, BODY).get_context()
    before = Message.objects.order_by('-pk').values_list('pk', flat=True).first() or 0
    messages = Message.objects.bulk_create(
        [
            Message(cls=EmailTextMessage.get_alias(), context=context, dispatches_ready=True, priority=priority)
            for _ in addresses
        ],
        batch_size=1000,
    )
    if any(message.pk is None for message in messages):  # a backend without RETURNING
        messages = list(Message.objects.filter(pk__gt=before).order_by('pk'))
    Dispatch.objects.bulk_create(
        [Dispatch(message=message, messenger='smtp', address=to) for message, to in zip(messages, addresses)],
        batch_size=1000,
    )


def sitemessage_statuses() -> dict:
    from django.db.models import Count

    from sitemessage.models import Dispatch

    names = dict(Dispatch.DISPATCH_STATUSES)
    return {
        str(names[status]).lower(): count
        for status, count in Dispatch.objects.values_list('dispatch_status').annotate(c=Count('pk')).order_by()
    }


def task_status(spec):
    from django.db.models import Count

    from sitemessage.models import Dispatch

    result = {'statuses': sitemessage_statuses()}
    if spec['lib'] == 'ours':
        result['claims'] = dict(
            Dispatch.objects.filter(dispatch_status=Dispatch.DISPATCH_STATUS_PROCESSING)
            .values_list('claim_token')
            .annotate(c=Count('pk'))
            .order_by()
        )
    return result


def send_queue(lib: str, spec) -> None:
    """Send everything queued with the library's own entry point."""
    if lib in ('ours', 'sm140'):
        from sitemessage.toolbox import send_scheduled_messages

        send_scheduled_messages()
    elif lib == 'post_office':
        from post_office.mail import send_queued_mail_until_done

        send_queued_mail_until_done(lockfile=str(Path(spec['workdir']) / 'post_office'), processes=1)
    elif lib == 'mailer':
        from mailer.engine import send_all

        send_all()


def warm_up(lib: str, warm: int) -> int:
    """Send the warm-up e-mails (not measured); return how many went to the sink."""
    if lib in ('ours', 'sm140'):
        from sitemessage.toolbox import send_scheduled_messages

        send_scheduled_messages(priority=1)
        return warm
    if lib == 'post_office':
        from post_office import mail

        mail.send(recipients=[address('warm', 0)], sender=FROM_EMAIL, subject=SUBJECT, message=BODY, priority='now')
        return 1
    if lib == 'mailer':
        from mailer.engine import send_all
        from mailer.models import Message

        first = list(Message.objects.order_by('pk').values_list('pk', flat=True)[:warm])
        send_all(Message.objects.filter(pk__in=first))
        return warm
    return 0


def sent_count(lib: str) -> tuple:
    """(e-mails recorded as sent, e-mails still queued or failed) by the library's own tables."""
    if lib in ('ours', 'sm140'):
        statuses = sitemessage_statuses()
        return statuses.get('sent', 0), sum(count for name, count in statuses.items() if name != 'sent')
    if lib == 'post_office':
        from post_office.models import STATUS, Email

        return Email.objects.filter(status=STATUS.sent).count(), Email.objects.exclude(status=STATUS.sent).count()
    from mailer.models import RESULT_SUCCESS, Message, MessageLog

    return MessageLog.objects.filter(result=RESULT_SUCCESS).count(), Message.objects.count()


def task_send(spec):
    """Warm up, then send the queue: wall time, SQL statements, ru_maxrss growth or tracemalloc peak."""
    import tracemalloc

    lib, trace, profile = spec['lib'], spec.get('trace', False), spec.get('profile', False)
    warm = warm_up(lib, spec.get('warm', 0))
    counter = QueryCounter()
    gc.collect()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    profiler = None
    thread_profiles: list = []
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profile_threads(thread_profiles)
    if trace:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
    with counter.every_connection():
        started = time.perf_counter()
        if profiler:
            profiler.enable()
        send_queue(lib, spec)
        if profiler:
            profiler.disable()
        seconds = time.perf_counter() - started
    result = {
        'seconds': seconds,
        'queries': counter.count,
        'warm': warm,
        'rss_mb': (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024,
    }
    if trace:
        result['peak_mb'] = (tracemalloc.get_traced_memory()[1] - base) / 1e6
        tracemalloc.stop()
    result['sent'], result['unsent'] = sent_count(lib)
    if profiler:
        result['profile'] = profile_text(profiler, spec.get('profile_top', 18))
        result['buckets'] = profile_buckets([profiler, *thread_profiles])
    return result


def profile_threads(profiles: list) -> None:
    """Profile every thread started from now on too (connection threads, recorders): one profiler each."""
    import cProfile
    import threading

    run = threading.Thread.run

    def profiled_run(thread):
        profiler = cProfile.Profile()
        profiles.append(profiler)
        profiler.runcall(run, thread)

    threading.Thread.run = profiled_run


# Where a send run's time goes, by the module of each function's own time (cProfile's tottime).
BUCKETS = (
    ('waiting on the socket (server replies, writes)', ("of '_socket.socket' objects", "of '_ssl._SSLSocket'")),
    ('waiting for another thread (locks, conditions)', ("of '_thread.lock' objects", "of '_thread.RLock' objects")),
    ('database (Django ORM, driver)', ('/django/db/', 'sqlite3', 'SQLiteCursorWrapper', '/psycopg')),
    ('smtplib (commands, replies)', ('/smtplib.py',)),
    ('building e-mails (email package)', ('/email/',)),
    ('sitemessage messengers and messages', ('/sitemessage/messengers/', '/sitemessage/messages/')),
    ('sitemessage engine and models', ('/sitemessage/',)),
    ('Django templates, i18n, utils', ('/django/',)),
)


def profile_buckets(profilers: list) -> dict:
    """Own time of every profiled function (all threads), summed per :data:`BUCKETS` entry (the first that matches).

    Threads overlap: the sum is CPU and waiting of all threads together, more than the wall time.
    """
    import pstats

    buckets: dict = {}
    stats = pstats.Stats(profilers[0])
    for other in profilers[1:]:
        stats.add(other)
    for (filename, _line, function), (_cc, _nc, own, _cum, _callers) in stats.stats.items():
        where = f'{filename} {function}'
        name = next((label for label, marks in BUCKETS if any(mark in where for mark in marks)), 'other')
        buckets[name] = buckets.get(name, 0.0) + own
    return buckets


def profile_text(profiler, top: int) -> str:
    import io
    import pstats

    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).strip_dirs().sort_stats('tottime').print_stats(top)
    stream.write('\nsitemessage functions by cumulative time\n')
    pstats.Stats(profiler, stream=stream).sort_stats('cumulative').print_stats(r'/sitemessage/', top)
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    keep = [line for line in lines if not line.lstrip().startswith(('Ordered by', 'List reduced'))]
    return '\n'.join(keep)


def task_raw(spec):
    """Plain smtplib: ``n`` pre-formatted messages with the headers and body of ours.

    Over one connection, or (``connections`` > 1) over that many connections, one thread each,
    sharing the messages as sitemessage's parallel sending does: the machine's own limit.
    """
    n, port, prefix = spec['n'], spec['port'], spec.get('prefix', 'user')
    connections = spec.get('connections', 1)
    body = BODY.replace('\n', '\r\n')
    template = (
        'From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n'
        'Message-ID: <{i}.{stamp}@example.com>\r\n'
        'List-Unsubscribe: <https://example.com/messages/unsubscribe/1/{i}/'
        '0123456789abcdef0123456789abcdef01234567/>\r\n'
        'List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n'
        'Content-Type: text/plain; charset="utf-8"\r\nContent-Transfer-Encoding: 7bit\r\n'
        'MIME-Version: 1.0\r\n\r\n{body}'
    )
    with smtplib.SMTP('127.0.0.1', port) as smtp:  # warm-up
        for i in range(spec.get('warm', 0)):
            smtp.sendmail(
                FROM_EMAIL,
                [address('warm', i)],
                template.format(
                    sender=FROM_EMAIL,
                    to=address('warm', i),
                    subject=SUBJECT,
                    date=formatdate(localtime=True),
                    i=i,
                    stamp=0,
                    body=body,
                ).encode(),
            )
    stamp = time.time_ns()

    def share(indexes):
        with smtplib.SMTP('127.0.0.1', port) as smtp:
            for i in indexes:
                to = address(prefix, i)
                data = template.format(
                    sender=FROM_EMAIL,
                    to=to,
                    subject=SUBJECT,
                    date=formatdate(localtime=True),
                    i=i,
                    stamp=stamp,
                    body=body,
                )
                smtp.sendmail(FROM_EMAIL, [to], data.encode())

    started = time.perf_counter()
    if connections == 1:
        share(range(n))
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(connections) as pool:
            for future in [pool.submit(share, range(k, n, connections)) for k in range(connections)]:
                future.result()
    return {'seconds': time.perf_counter() - started, 'warm': spec.get('warm', 0), 'queries': 0, 'sent': n, 'unsent': 0}


SCHEDULE_SHAPES = {
    'backend': '10k distinct e-mails, one recipient each: EmailBackend.send_messages() (Django send_mass_mail)',
    'send_many': '10k distinct e-mails, one recipient each: post_office mail.send_many()',
    'newsletter': 'one e-mail to 10k recipients: schedule_messages(EmailTextMessage, recipients(10k))',
    'list': '10k EmailTextMessage in one schedule_messages() call, one recipient',
    'raw_same': 'raw bulk_create of the same rows: 10k Message + 10k Dispatch',
    'raw_rows': 'raw bulk_create of 10k Dispatch rows (+1 Message)',
}


def task_schedule(spec):
    """Time one scheduling call of ``n`` e-mails (best of ``reps``); the tables are wiped before each."""
    from django.db import connection, transaction

    lib, shape, n, reps = spec['lib'], spec['shape'], spec['n'], spec['reps']
    times, queries = [], 0
    profiler = None
    for rep in range(reps + 1):  # rep 0: a warm-up of 10 e-mails
        size = 10 if rep == 0 else n
        wipe(lib)
        call = schedule_call(lib, shape, size)
        gc.collect()
        counter = QueryCounter()
        if spec.get('profile') and rep == reps:
            import cProfile

            profiler = cProfile.Profile()
        with connection.execute_wrapper(counter):
            started = time.perf_counter()
            if profiler:
                profiler.enable()
            with transaction.atomic() if shape.startswith('raw') else _nothing():
                call()
            if profiler:
                profiler.disable()
            seconds = time.perf_counter() - started
        if rep:
            times.append(seconds)
            queries = counter.count
    result = {'best': min(times), 'times': times, 'queries': queries, 'rows': scheduled_rows(lib)}
    if profiler:
        result['profile'] = profile_text(profiler, 18)
    return result


def task_schedule_one(spec):
    """``n`` separate ``schedule_email()`` calls in autocommit, as views make them; seconds and statements.

    A warm-up of 50 calls first (imports, first queries); the tables are wiped before it.
    """
    from django.db import connection

    from sitemessage.shortcuts import schedule_email

    wipe(spec['lib'])
    for i in range(50):
        schedule_email(BODY, address('warm', i), subject=SUBJECT)
    counter = QueryCounter()
    n = spec['n']
    addresses = [address('one', i) for i in range(n)]
    gc.collect()
    with connection.execute_wrapper(counter):
        started, cpu_started = time.perf_counter(), time.process_time()
        for to in addresses:
            schedule_email(BODY, to, subject=SUBJECT)
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {'seconds': seconds, 'cpu': cpu, 'statements': counter.count, 'rows': scheduled_rows(spec['lib']) - 50}


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def schedule_call(lib: str, shape: str, n: int):
    """Build the inputs (not timed) and return the call to time."""
    from django.core.mail import EmailMessage, get_connection

    bodies = [f'{BODY}\n#{i}' for i in range(n)]
    addresses = [address('sched', i) for i in range(n)]
    if shape == 'backend':
        path = {
            'ours': 'sitemessage.backends.EmailBackend',
            'sm140': 'sitemessage.backends.EmailBackend',
            'post_office': 'post_office.EmailBackend',
            'mailer': 'mailer.backend.DbBackend',
        }[lib]
        mails = [EmailMessage(SUBJECT, body, FROM_EMAIL, [to]) for body, to in zip(bodies, addresses)]
        backend = get_connection(path)
        return lambda: backend.send_messages(mails)
    if shape == 'send_many':
        from post_office import mail

        kwargs = [
            {'sender': FROM_EMAIL, 'recipients': [to], 'subject': SUBJECT, 'message': body}
            for body, to in zip(bodies, addresses)
        ]
        return lambda: mail.send_many(kwargs)
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Dispatch, Message
    from sitemessage.toolbox import recipients, schedule_messages

    if shape == 'newsletter':
        return lambda: schedule_messages(EmailTextMessage(SUBJECT, BODY), recipients('smtp', addresses))
    if shape == 'list':
        return lambda: schedule_messages(
            [EmailTextMessage(SUBJECT, body) for body in bodies], recipients('smtp', 'digest@example.com')
        )
    alias = EmailTextMessage.get_alias()
    if shape == 'raw_same':

        def raw_same():
            messages = Message.objects.bulk_create(
                [
                    Message(
                        cls=alias, context={'subject': SUBJECT, 'type': 'plain', 'stext_': body}, dispatches_ready=True
                    )
                    for body in bodies
                ]
            )
            Dispatch.objects.bulk_create(
                [Dispatch(message=message, messenger='smtp', address=to) for message, to in zip(messages, addresses)]
            )

        return raw_same
    if shape == 'raw_rows':

        def raw_rows():
            message = Message.objects.create(
                cls=alias, context={'subject': SUBJECT, 'type': 'plain', 'stext_': BODY}, dispatches_ready=True
            )
            Dispatch.objects.bulk_create([Dispatch(message=message, messenger='smtp', address=to) for to in addresses])

        return raw_rows
    raise ValueError(shape)


def scheduled_rows(lib: str) -> int:
    """E-mails (dispatches / queued mails) the scheduling wrote: checked against the expected count."""
    if lib in ('ours', 'sm140'):
        from sitemessage.models import Dispatch

        return Dispatch.objects.count()
    if lib == 'post_office':
        from post_office.models import Email

        return Email.objects.count()
    from mailer.models import Message

    return Message.objects.count()


def task_command(spec):
    """A worker: the library's send command, once, to completion (scenarios 5 and 6)."""
    import io

    from django.core.management import call_command

    out = io.StringIO()
    started = time.perf_counter()
    call_command('sitemessage_send_scheduled', '--ok-on-errors', stdout=out)  # the output is what counts
    return {'output': out.getvalue(), 'seconds': time.perf_counter() - started}


TASKS = {
    'migrate': task_migrate,
    'fill': task_fill,
    'send': task_send,
    'raw': task_raw,
    'status': task_status,
    'schedule': task_schedule,
    'schedule_one': task_schedule_one,
    'command': task_command,
}


# Orchestration --------------------------------------------------------------------------------------------


def progress(text: str) -> None:
    print(f'[{time.strftime("%H:%M:%S")} load {os.getloadavg()[0]:.2f}] {text}', file=sys.stderr, flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f'load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs'


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(
        host='127.0.0.1', port=5432, user='postgres', dbname='postgres', autocommit=True, connect_timeout=5
    ) as conn:
        conn.execute(sql)


def pg_available() -> str:
    try:
        pg_admin('SELECT 1')
    except Exception as error:  # noqa: BLE001 - any failure means: no PostgreSQL here
        return f'{type(error).__name__}: {error}'
    return ''


class Bench:
    """One engine's scenarios; results go into ``self.tables`` and ``self.targets``."""

    def __init__(self, engine: str, args, sink: Sink, workdir: Path, libs: list):
        self.engine, self.args, self.sink, self.libs = engine, args, sink, libs
        self.run = Run(engine, workdir, sink.port)
        self.quick = args.quick
        self.targets = []  # (scenario, target, measured, verdict)
        self.notes = []
        self.profiles = []

    # Databases

    def create_databases(self) -> None:
        for lib in self.libs:
            if self.engine == 'postgres':
                name = self.run.db(lib)['name']
                pg_admin(f'DROP DATABASE IF EXISTS {name} WITH (FORCE)')
                pg_admin(f'CREATE DATABASE {name}')
            self.run.child(lib, 'migrate', timeout=600)

    def drop_databases(self) -> None:
        for lib in LIBS:
            if self.engine == 'postgres':
                try:
                    pg_admin(f'DROP DATABASE IF EXISTS {self.run.db(lib)["name"]} WITH (FORCE)')
                except Exception as error:  # noqa: BLE001
                    print(f'Could not drop the database of {lib}: {error}', file=sys.stderr)
            else:
                Path(self.run.db(lib)['name']).unlink(missing_ok=True)

    # Measurements

    def send_once(
        self, lib: str, n: int, connections: int = 1, trace=False, profile=False, prefix='user', settings=None
    ) -> dict:
        """Fill the queue, send it in a fresh process; check every e-mail arrived once."""
        warm = WARM_UP
        if lib == 'raw':
            self.sink.reset()
            result = self.run.child('raw', 'raw', n=n, warm=warm, prefix=prefix, connections=connections)
        else:
            self.run.child(lib, 'fill', n=n, warm=warm, prefix=prefix)
            self.sink.reset()
            result = self.run.child(
                lib, 'send', connections=connections, trace=trace, profile=profile, warm=warm, settings=settings or {}
            )
        received = self.sink.total
        expected = n + result['warm']
        problems = []
        if received != expected:
            problems.append(f'the sink received {received} e-mails, expected {expected}')
        if result['sent'] != expected and lib != 'raw':
            problems.append(f'{result["sent"]} recorded as sent, {result["unsent"]} not, expected {expected} sent')
        if problems:
            raise ChildError(f'{lib} send of {n}: ' + '; '.join(problems))
        result['rate'] = n / result['seconds']
        return result

    def safely(self, label: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - one broken contender must not stop the run
            message = f'{label}: {error}'
            if not isinstance(error, ChildError):
                message += '\n' + traceback.format_exc(limit=3)
            self.notes.append(message)
            progress(f'FAILED {message}')
            return None

    def verdict(self, scenario: str, target: str, measured: str, ok) -> str:
        result = 'n/a' if ok is None else ('PASS' if ok else 'FAIL')
        self.targets.append((scenario, target, measured, result))
        return result

    # Scenario 1 and 2: send rates -------------------------------------------------------------------

    def rates(self, n: int, contenders: list, reps: int, label: str) -> dict:
        """Best-of-``reps`` msgs/s of each contender, runs interleaved (a busy machine hits all alike)."""
        results = {name: [] for name, *_rest in contenders}
        queries = {}
        for rep in range(reps):
            for name, lib, connections, settings in contenders:
                progress(f'{label}: {name}, {n} e-mails, run {rep + 1}/{reps}')
                result = self.safely(f'{label} {name}', self.send_once, lib, n, connections, settings=settings)
                if result:
                    results[name].append(result['rate'])
                    queries[name] = result['queries'] / n
        return {name: (max(rates) if rates else None, rates, queries.get(name)) for name, rates in results.items()}

    def scenario_rates(self, number: int, delay: float, n: int, reps: int, contenders: list) -> None:
        self.sink.set_delay(delay)
        title = (
            f'Scenario {number}: SMTP sink answering '
            + ('at once' if not delay else f'each message after {delay * 1000:.0f} ms')
            + f'; queue of {n} e-mails (one per recipient), best of {reps} run(s), {load()}'
        )
        label = f'S{number}'
        contenders = [tuple(item) + ({},) * (4 - len(item)) for item in contenders]
        try:
            measured = self.rates(n, contenders, reps, label)
            self._rates_table(number, title, measured, contenders)
            ours = measured.get('ours, 1 connection', (None,))[0]
            raw = measured.get('raw smtplib, 1 connection', (None,))[0]
            old = measured.get('sitemessage 1.4.0', (None,))[0]
            parallel = measured.get('ours, 8 connections', (None,))[0]
            if number == 1 and ours and raw and ours / raw < 0.9:
                self.profile_send(min(n, 3000), 1, 'zero-latency sink')
            if number == 2 and parallel and old and parallel / old < 8:
                self.profile_send(
                    min(n, 1000),
                    8,
                    f'sink answering after {delay * 1000:.0f} ms; main thread only: '
                    'the time the loop spends outside the sending threads',
                )
        finally:
            self.sink.set_delay(0.0)

    def _rates_table(self, number, title, measured, contenders) -> None:
        raw = measured.get('raw smtplib, 1 connection', (None,))[0]
        old = measured.get('sitemessage 1.4.0', (None,))[0]
        rows = []
        for name, lib, connections, settings in contenders:
            best, runs, qpd = measured[name]
            target, verdict = '', ''
            if lib == 'ours' and best is not None:
                checks = []
                if number == 1 and not settings:
                    if raw:
                        checks.append(('>= 0.9x raw', best / raw >= 0.9, f'{best / raw:.3f}x raw'))
                    if old:
                        checks.append(('>= 1.0x 1.4.0', best / old >= 1.0, f'{best / old:.3f}x 1.4.0'))
                    others = {
                        key: measured[key][0]
                        for key in measured
                        if measured[key][0] and key.startswith(('django-post_office', 'django-mailer'))
                    }
                    if others:
                        top_name, top = max(others.items(), key=lambda item: item[1])
                        checks.append(
                            ('ahead of post_office/mailer', best >= top, f'{best / top:.3f}x {top_name.split(" (")[0]}')
                        )
                elif number == 2 and connections == 8 and not settings and old:
                    checks.append(('>= 8x 1.4.0', best / old >= 8, f'{best / old:.3f}x 1.4.0'))
                for text, ok, figure in checks:
                    self.verdict(f'S{number} {self.engine}: {name}', text, figure, ok)
                target = '; '.join(text for text, _ok, _figure in checks)
                verdict = ' '.join('PASS' if ok else 'FAIL' for _text, ok, _figure in checks)
            rows.append(
                [
                    name,
                    fmt(best, '{:.0f}'),
                    ' '.join(f'{rate:.0f}' for rate in runs) or 'error',
                    fmt(qpd, '{:.3f}'),
                    ratio(best, raw),
                    ratio(best, old),
                    target,
                    verdict,
                ]
            )
        self.table(
            title,
            ['contender', 'msgs/s (best)', 'all runs', 'queries/e-mail', 'vs raw', 'vs 1.4.0', 'target', 'result'],
            rows,
        )

    def profile_send(self, n: int, connections: int, what: str) -> None:
        progress(f'profile: ours, {connections} connection(s), {n} e-mails under cProfile')
        result = self.safely('profile', self.send_once, 'ours', n, connections, profile=True)
        if result:
            self.profiles.append(
                (
                    f'cProfile of send_scheduled_messages(), {n} e-mails, {connections} '
                    f'connection(s), {what}, {self.engine} ({result["rate"]:.0f} msgs/s under the '
                    f'profiler)',
                    result['profile'],
                )
            )

    # Scenario 3: memory and queries by queue size ------------------------------------------------------

    def scenario_sizes(self, sizes: list, contenders: list) -> None:
        rows, peaks = [], {}
        title = (
            f'Scenario 3: queue size; peak memory of the sending process and SQL per sent e-mail '
            f'(zero-latency sink), {load()}'
        )
        for name, lib, max_size in contenders:
            for n in sizes:
                if n > max_size:
                    continue
                progress(f'S3: {name}, {n} queued (timed run)')
                timed = self.safely(f'S3 {name} {n} timed', self.send_once, lib, n)
                progress(f'S3: {name}, {n} queued (tracemalloc run)')
                traced = self.safely(f'S3 {name} {n} tracemalloc', self.send_once, lib, n, trace=True)
                qpd = timed['queries'] / n if timed else (traced['queries'] / n if traced else None)
                target = verdict = ''
                if lib == 'ours' and qpd is not None:
                    target = '<= 0.05 queries/e-mail'
                    verdict = self.verdict(f'S3 {self.engine}: ours, {n} queued', target, f'{qpd:.3f}', qpd <= 0.05)
                if traced:
                    peaks.setdefault(name, {})[n] = traced['peak_mb']
                rows.append(
                    [
                        name,
                        str(n),
                        fmt(timed and timed['rate'], '{:.0f}'),
                        fmt(timed and timed['queries'], '{:d}'),
                        fmt(qpd, '{:.3f}'),
                        fmt(traced and traced['peak_mb'], '{:.1f}'),
                        fmt(timed and timed['rss_mb'], '{:.1f}'),
                        target,
                        verdict,
                    ]
                )
        for name, by_size in peaks.items():
            small, large = min(by_size), max(by_size)
            if small == large:
                continue
            growth = by_size[large] / by_size[small] if by_size[small] else None
            target = verdict = ''
            if name.startswith('ours') and growth is not None:
                target = f'peak({large}) <= 1.3x peak({small})'
                verdict = self.verdict(
                    f'S3 {self.engine}: ours memory',
                    target + ('' if large >= 100_000 else ' (quick run: 100k not measured)'),
                    f'{growth:.2f}x',
                    growth <= 1.3,
                )
            rows.append([name, f'{large} vs {small}', '', '', '', fmt(growth, '{:.2f}x'), '', target, verdict])
        self.table(
            title,
            [
                'contender',
                'queued',
                'msgs/s',
                'queries',
                'queries/e-mail',
                'peak MB (tracemalloc)',
                'maxrss +MB',
                'target',
                'result',
            ],
            rows,
        )

    # Scenario 4: scheduling ---------------------------------------------------------------------------------

    def scenario_schedule(self, n: int, reps: int, skip=frozenset()) -> None:
        title = f'Scenario 4: scheduling {n} e-mails in one call (best of {reps}), {load()}'
        plan = [
            ('raw_rows', 'ours'),
            ('raw_same', 'ours'),
            ('backend', 'ours'),
            ('backend', 'sm140'),
            ('backend', 'post_office'),
            ('send_many', 'post_office'),
            ('backend', 'mailer'),
            ('newsletter', 'ours'),
            ('newsletter', 'sm140'),
            ('list', 'ours'),
            ('list', 'sm140'),
        ]
        results = {}
        for shape, lib in plan:
            if lib not in self.libs or (shape, lib) in skip:
                continue
            progress(f'S4: {shape} with {lib}, {n} e-mails')
            result = self.safely(f'S4 {shape} {lib}', self.run.child, lib, 'schedule', shape=shape, n=n, reps=reps)
            if result and result['rows'] != n:
                self.notes.append(f'S4 {shape} {lib}: {result["rows"]} rows written, expected {n}')
            results[(shape, lib)] = result
        raw_same = (results.get(('raw_same', 'ours')) or {}).get('best')
        raw_rows = (results.get(('raw_rows', 'ours')) or {}).get('best')
        rows = []
        for (shape, lib), result in results.items():
            best = result and result['best']
            baseline = raw_rows if shape in ('raw_rows', 'newsletter') else raw_same
            target = verdict = ''
            if lib == 'ours' and not shape.startswith('raw') and best and baseline:
                target = '<= 3x raw bulk_create of the same rows'
                verdict = self.verdict(
                    f'S4 {self.engine}: ours {shape}', target, f'{best / baseline:.2f}x', best / baseline <= 3
                )
                if best / baseline > 3 and not any(
                    title.startswith('cProfile of scheduling') for title, _ in self.profiles
                ):
                    profiled = self.safely(
                        'S4 profile', self.run.child, lib, 'schedule', shape=shape, n=n, reps=1, profile=True
                    )
                    if profiled:
                        self.profiles.append(
                            (f'cProfile of scheduling ({shape}), {n} e-mails, {self.engine}', profiled['profile'])
                        )
            rows.append(
                [
                    'raw Django ORM' if shape.startswith('raw') else 'ours' if lib == 'ours' else LIBS[lib].label,
                    SCHEDULE_SHAPES[shape].replace('10k', f'{n // 1000}k' if n >= 1000 else str(n)),
                    fmt(best, '{:.3f}'),
                    ' '.join(f'{t:.3f}' for t in result['times']) if result else 'error',
                    fmt(result and result['queries'], '{:d}'),
                    fmt(result and result['queries'] / n, '{:.4f}'),
                    '' if shape.startswith('raw') else ratio(best, baseline),
                    target,
                    verdict,
                ]
            )
        self.table(
            title,
            [
                'library',
                'call',
                'seconds',
                'all runs',
                'queries',
                'queries/e-mail',
                'x raw same rows',
                'target',
                'result',
            ],
            rows,
        )
        self.notes.append(
            'S4 "x raw same rows" divides by the raw bulk_create of the rows that call writes: '
            '10k Message + 10k Dispatch for distinct e-mails, 1 Message + 10k Dispatch for the '
            'newsletter (post_office / mailer write their own tables: compare their seconds).'
        )

    # Scenario 5: 4 workers ----------------------------------------------------------------------------------

    def scenario_workers(self, n: int, workers: int, libs: list) -> None:
        title = f'Scenario 5: {workers} worker processes sharing a queue of {n} e-mails, {load()}'
        rows = []
        for lib in libs:
            progress(f'S5: {lib}, {workers} workers, {n} e-mails')
            result = self.safely(f'S5 {lib}', self._workers, lib, n, workers)
            if not result:
                rows.append([LIBS[lib].label, 'error', '', '', '', '', '', '', ''])
                continue
            target = verdict = ''
            ok = result['duplicates'] == 0 and result['lost'] == 0 and result['all_sent']
            if lib == 'ours':
                target = '0 duplicates, 0 lost, all sent'
                if self.engine == 'postgres':
                    verdict = self.verdict(
                        f'S5 postgres: ours, {workers} workers x {n}',
                        target,
                        f'dup {result["duplicates"]}, lost {result["lost"]}, sent {result["statuses"].get("sent", 0)}',
                        ok,
                    )
                else:
                    target += ' (target set for PostgreSQL; shown for SQLite)'
                    verdict = 'PASS' if ok else 'FAIL'
            rows.append(
                [
                    LIBS[lib].label,
                    fmt(result['rate'], '{:.0f}'),
                    str(result['duplicates']),
                    str(result['lost']),
                    status_text(result['statuses']),
                    result['by_worker'],
                    result['errors'] or '-',
                    target,
                    verdict,
                ]
            )
        self.table(
            title,
            [
                'library',
                'msgs/s (all workers)',
                'duplicates',
                'lost',
                'dispatch statuses',
                'sent by worker',
                'worker errors',
                'target',
                'result',
            ],
            rows,
        )

    def _workers(self, lib: str, n: int, workers: int) -> dict:
        self.run.child(lib, 'fill', n=n, prefix='w')
        self.sink.reset()
        started = time.perf_counter()
        procs = [self.run.start(lib, 'command', f's5-{lib}-{i}') for i in range(workers)]
        outputs, errors = [], []
        for proc in procs:
            try:
                outputs.append(proc.result(timeout=3600)['output'])
            except ChildError as error:
                errors.append(str(error).splitlines()[-1][:200])
        seconds = time.perf_counter() - started
        return self._check_queue(lib, n, 'w', outputs, errors, seconds)

    def _check_queue(self, lib, n, prefix, outputs, errors, seconds) -> dict:
        counts = self.sink.counts()
        expected = {address(prefix, i) for i in range(n)}
        received = {to: count for to, count in counts.items() if to in expected}
        statuses = self.run.child(lib, 'status')['statuses']
        by_worker = [
            int(line.split(',')[0].split()[1])
            for output in outputs
            for line in output.splitlines()
            if line.startswith('Sent: ')
        ]
        return {
            'duplicates': sum(count - 1 for count in received.values()),
            'lost': len(expected) - len(received),
            'statuses': statuses,
            'all_sent': statuses.get('sent', 0) == n and sum(statuses.values()) == n,
            'rate': n / seconds,
            'by_worker': ' '.join(map(str, by_worker)) or 'n/a',
            'errors': '; '.join(errors),
        }

    # Scenario 6: SIGKILL ---------------------------------------------------------------------------------------

    def scenario_kill(self, n: int, lease: int, libs: list) -> None:
        title = (
            f'Scenario 6: SIGKILL of one of 2 workers mid-run ({n} e-mails queued, lease {lease} s), then '
            f'one more run after the lease, {load()}'
        )
        rows = []
        for lib in libs:
            progress(f'S6: {lib}, 2 workers, {n} e-mails, kill one')
            result = self.safely(f'S6 {lib}', self._kill, lib, n, lease)
            if not result:
                rows.append([LIBS[lib].label] + ['error'] + [''] * 8)
                continue
            target = verdict = ''
            if lib == 'ours':
                target = '0 lost, 0 processing, duplicates <= in-flight chunk'
                ok = (
                    result['lost'] == 0
                    and result['statuses'].get('processing', 0) == 0
                    and result['statuses'].get('sent', 0) == n
                    and result['duplicates'] <= result['in_flight']
                )
                verdict = self.verdict(
                    f'S6 {self.engine}: ours',
                    target,
                    f'lost {result["lost"]}, processing '
                    f'{result["statuses"].get("processing", 0)}, dup {result["duplicates"]} '
                    f'<= in-flight {result["in_flight"]}',
                    ok,
                )
            rows.append(
                [
                    LIBS[lib].label,
                    f'{result["killed_at"]}',
                    str(result['in_flight']),
                    str(result['duplicates']),
                    str(result['lost']),
                    str(result['statuses'].get('processing', 0)),
                    status_text(result['statuses']),
                    result['how'],
                    target,
                    verdict,
                ]
            )
        self.table(
            title,
            [
                'library',
                'killed after (sink count)',
                "killed worker's in-flight chunk",
                'duplicates',
                'lost',
                'stuck in processing',
                'dispatch statuses at the end',
                'notes',
                'target',
                'result',
            ],
            rows,
        )

    def _kill(self, lib: str, n: int, lease: int) -> dict:
        settings = {'SITEMESSAGE_SEND_LEASE_SECONDS': lease}
        self.run.child(lib, 'fill', n=n, prefix='k')
        self.sink.reset()
        procs = [self.run.start(lib, 'command', f's6-{lib}-{i}', settings=settings) for i in range(2)]
        deadline = time.monotonic() + 600
        while self.sink.total < n * 0.3 and time.monotonic() < deadline and all(p.popen.poll() is None for p in procs):
            time.sleep(0.01)
        # Kill the busier worker (by CPU time so far): with 1.4.0 it is the one holding the claims.
        victim = max(procs, key=lambda proc: proc.cpu_seconds())
        killed_at = self.sink.total
        victim.popen.kill()
        victim.popen.wait(10)
        killed_time = time.monotonic()
        snapshot = self.run.child(lib, 'status')
        survivor = [proc for proc in procs if proc is not victim][0]
        outputs, errors = [], []
        try:
            outputs.append(survivor.result(timeout=3600)['output'])
        except ChildError as error:
            errors.append(str(error).splitlines()[-1][:200])
        survivor_done = time.monotonic()
        after_survivor = self.run.child(lib, 'status')
        how = []
        if lib == 'ours':
            left = after_survivor.get('claims', {})
            if survivor_done < killed_time + lease and left:
                in_flight = sum(left.values())
                how.append('in-flight = dispatches still claimed by the killed worker when the survivor ended')
            else:
                in_flight = max((snapshot.get('claims') or {0: 0}).values())
                how.append(
                    'the survivor outlived the lease and took the claims over; in-flight = largest claim '
                    'held at the kill'
                )
        else:
            in_flight = after_survivor['statuses'].get('processing', 0)
            how.append('1.4.0 has no lease: in-flight = rows left in processing')
        time.sleep(max(0.0, killed_time + lease + 1 - time.monotonic()))
        final = self.run.start(lib, 'command', f's6-{lib}-final', settings=settings)
        try:
            outputs.append(final.result(timeout=3600)['output'])
        except ChildError as error:
            errors.append(str(error).splitlines()[-1][:200])
        result = self._check_queue(lib, n, 'k', outputs, errors, 1.0)
        if errors:
            how.append('worker errors: ' + '; '.join(errors))
        result.update(killed_at=killed_at, in_flight=in_flight, how='; '.join(how))
        return result

    # Output ------------------------------------------------------------------------------------------------

    def table(self, title: str, header: list, rows: list) -> None:
        print(f'\n[{self.engine}] {title}')
        print_table(header, rows)
        sys.stdout.flush()


def fmt(value, pattern: str) -> str:
    if value is None or value is False:
        return '-'
    return pattern.format(value)


def ratio(value, base) -> str:
    return f'{value / base:.2f}x' if value and base else '-'


def status_text(statuses: dict) -> str:
    return ', '.join(f'{name} {count}' for name, count in sorted(statuses.items())) or '-'


def print_table(header: list, rows: list) -> None:
    cells = [header] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    for index, line in enumerate(cells):
        print(
            ' | '.join(
                cell.ljust(width) if i < 2 else cell.rjust(width) for i, (cell, width) in enumerate(zip(line, widths))
            ).rstrip()
        )
        if index == 0:
            print('-+-'.join('-' * width for width in widths))


def run_engine(engine: str, args, sink: Sink, workdir: Path, libs: list) -> Bench:
    bench = Bench(engine, args, sink, workdir, libs)
    quick = args.quick

    def size(n: int) -> int:  # --scale (hidden) shrinks every size, to try the script out
        return max(20, int(n * args.scale))

    print(f'\n=== {engine} ' + '=' * 100)
    progress(f'{engine}: creating and migrating the databases of {", ".join(libs)}')
    bench.create_databases()
    try:
        have = set(libs)
        contenders = [
            item
            for item in (
                ('ours, 1 connection', 'ours', 1),
                ('ours, 4 connections', 'ours', 4),
                ('ours, 1 connection, no PIPELINING (no target)', 'ours', 1, {'BENCH_SMTP_PIPELINING': False}),
                ('raw smtplib, 1 connection', 'raw', 1),
                ('sitemessage 1.4.0', 'sm140', 1),
                ('django-post_office (5 threads, its default)', 'post_office', 1),
                ('django-mailer', 'mailer', 1),
            )
            if item[1] == 'raw' or item[1] in have
        ]
        if 1 in args.scenarios:
            bench.scenario_rates(1, 0.0, size(1500 if quick else 5000), 2 if quick else 3, contenders)

        contenders = [
            item
            for item in (
                ('ours, 8 connections', 'ours', 8),
                ('ours, 1 connection', 'ours', 1),
                ('ours, 8 connections, no PIPELINING (no target)', 'ours', 8, {'BENCH_SMTP_PIPELINING': False}),
                ('raw smtplib, 1 connection', 'raw', 1),
                ("raw smtplib, 8 connections (8 threads; the machine's limit, no target)", 'raw', 8),
                ('sitemessage 1.4.0', 'sm140', 1),
                ('django-post_office (5 threads, its default)', 'post_office', 1),
                ('django-mailer', 'mailer', 1),
            )
            if item[1] == 'raw' or item[1] in have
        ]
        if 2 in args.scenarios:
            bench.scenario_rates(2, 0.02, size(800 if quick else 2000), 1 if quick else 3, contenders)

        sizes = [size(1000), size(10000)] + ([] if quick else [size(100000)])
        contenders = [
            (name, lib, limit)
            for name, lib, limit in (
                ('ours, 1 connection', 'ours', 10**9),
                ('sitemessage 1.4.0', 'sm140', 10**9),
                ('django-post_office', 'post_office', size(10000)),
                ('django-mailer', 'mailer', size(10000)),
            )
            if lib in have
        ]
        if quick:
            contenders = [item for item in contenders if item[1] in ('ours', 'sm140')]
        if 3 in args.scenarios:
            bench.scenario_sizes(sizes, contenders)
        if 4 in args.scenarios:
            bench.scenario_schedule(
                size(10000), 1 if quick else 3, skip={('backend', 'post_office'), ('list', 'sm140')} if quick else set()
            )

        worker_libs = [lib for lib in ('ours', 'sm140') if lib in have and not (quick and lib != 'ours')]
        if 5 in args.scenarios and (engine == 'postgres' or not quick):
            bench.scenario_workers(size(5000 if quick else 20000), 4, worker_libs)
        if 6 in args.scenarios and (not quick or args.all):
            bench.scenario_kill(size(10000), 20 if args.scale == 1 else 5, worker_libs)
    finally:
        bench.drop_databases()
    for title, text in bench.profiles:
        print(f'\n[{engine}] {title}\n{text}')
    return bench


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--quick',
        action='store_true',
        help='sizes 1k/10k, smaller queues, fewer runs and baselines, no SIGKILL scenario: a few minutes',
    )
    parser.add_argument(
        '--db', choices=['sqlite', 'postgres', 'both'], default='both', help='database engine(s) (default: both)'
    )
    parser.add_argument(
        '--only',
        default='',
        help='comma-separated libraries to include besides ours (sm140,post_office,mailer; default: all)',
    )
    parser.add_argument(
        '--scenarios',
        default='1,2,3,4,5,6',
        help='comma-separated scenario numbers to run (default: all; --quick never runs 6)',
    )
    parser.add_argument('--child', help=argparse.SUPPRESS)
    parser.add_argument('--scale', type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument('--all', action='store_true', help=argparse.SUPPRESS)  # quick sizes, every scenario
    args = parser.parse_args(argv)
    try:
        args.scenarios = {int(number) for number in args.scenarios.split(',') if number.strip()}
    except ValueError:
        parser.error(f'--scenarios takes numbers 1-6 separated by commas, got {args.scenarios!r}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0
    started = time.monotonic()
    wanted = ['ours'] + (
        [lib for lib in args.only.split(',') if lib in LIBS and lib != 'ours']
        if args.only
        else ['sm140', 'post_office', 'mailer']
    )
    libs = []
    for key in wanted:
        if LIBS[key].ensure():
            libs.append(key)
        else:
            progress(f'{LIBS[key].label} is left out: {LIBS[key].error}')
    engines = ['sqlite', 'postgres'] if args.db == 'both' else [args.db]
    if 'postgres' in engines:
        problem = pg_available()
        if problem:
            progress(f'PostgreSQL at 127.0.0.1:5432 is not reachable ({problem}): its scenarios are skipped')
            engines.remove('postgres')
    print(
        f'sitemessage comparison ({"quick" if args.quick else "full"} run), {time.strftime("%Y-%m-%d %H:%M")}, {load()}'
    )
    for key in LIBS:
        lib = LIBS[key]
        state = lib.versions if key in libs else f'NOT MEASURED: {lib.error or "not selected (--only)"}'
        print(f'  {lib.label}: {state}')
    print(
        f'  sink: {SINK_PROCESSES} aiosmtpd processes behind a dispatcher on 127.0.0.1, offering PIPELINING; '
        'every e-mail is plain text with a List-Unsubscribe link, one recipient'
    )
    workdir = Path(tempfile.mkdtemp(prefix='sitemessage-compare-'))
    sink = Sink().start()
    benches = []
    try:
        for engine in engines:
            benches.append(run_engine(engine, args, sink, workdir, libs))
    finally:
        sink.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print('\n=== Targets (issue 4) ' + '=' * 90)
    rows = [list(target) for bench in benches for target in bench.targets]
    print_table(['where', 'target', 'measured', 'result'], rows)
    notes = list(dict.fromkeys(note for bench in benches for note in bench.notes))
    for key in LIBS:
        if LIBS[key].error:
            notes.append(f'{LIBS[key].label} was not measured: {LIBS[key].error}')
    if notes:
        print('\nNotes:')
        for note in notes:
            print(f'- {note}')
    print(f'\nFinished in {(time.monotonic() - started) / 60:.1f} min, {load()}')
    failed = sum(1 for row in rows if row[3] == 'FAIL')
    print(f'{failed} target(s) failed, {sum(1 for row in rows if row[3] == "PASS")} passed.')
    return 0


if __name__ == '__main__':
    sys.exit(main())

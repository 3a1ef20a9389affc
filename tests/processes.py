"""Real processes for tests/background/test_worker.py: a throw-away database, commands, ORM snippets, a slow SMTP sink.

Fixtures (import them into the test module):

- ``process_db``: a fresh, migrated database for subprocesses -- an SQLite file under ``tmp_path``, or,
  with ``SITEMESSAGE_TEST_DB=postgres``, a PostgreSQL database created from a migrated template and
  dropped afterwards;
- ``sink``: a slow SMTP sink (:class:`SlowSink`) on 127.0.0.1;
- ``procs``: :class:`Processes` -- runs ``python -m django <command>`` (settings: tests/process_settings.py)
  and ORM snippets of this module in subprocesses; every process it started is killed at teardown.

ORM snippets run as ``python -m tests.processes <function> '<json kwargs>'`` and print JSON.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from tests.smtp_handlers import RefusingHandler, loopback_controller

REPO = Path(__file__).resolve().parent.parent
PROCESS_SETTINGS = 'tests.process_settings'
ON_POSTGRES = os.environ.get('SITEMESSAGE_TEST_DB', 'sqlite') == 'postgres'
STATUS_NAMES = {1: 'pending', 2: 'sent', 3: 'error', 4: 'failed', 5: 'processing'}
SUMMARY = re.compile(r'Sent: (\d+), errors: (\d+), failed: (\d+), seconds: ([\d.]+)')


def address(prefix: str, index: int) -> str:
    return f'{prefix}{index:04d}@example.com'


# The slow SMTP sink -------------------------------------------------------------------------------


class SlowSink(RefusingHandler):
    """aiosmtpd handler answering each DATA after ``delay`` seconds; records ``(time.time(), rcpt)``.

    ``refuse`` maps an address to the reply to its RCPT (``'550 ...'``, ``'451 ...'``).
    ``hold_at = n`` makes the n-th DATA wait (after it is recorded) until :meth:`release`:
    the sender is then reliably in the middle of a batch.
    """

    def __init__(self, delay: float = 0.0):
        super().__init__()
        self.delay = delay
        self.received: List[Tuple[float, str]] = []
        self.hold_at: Optional[int] = None
        self.holding = threading.Event()
        self._released = threading.Event()
        self._data_count = 0

    async def handle_DATA(self, server, session, envelope):
        now = time.time()
        self.received.extend((now, rcpt) for rcpt in envelope.rcpt_tos)
        self._data_count += 1
        if self.hold_at is not None and self._data_count == self.hold_at:
            self.holding.set()
            while not self._released.is_set():
                await asyncio.sleep(0.01)
        if self.delay:
            await asyncio.sleep(self.delay)
        return '250 Message accepted for delivery'

    def release(self) -> None:
        self._released.set()

    def rcpts(self) -> List[str]:
        return [rcpt for _at, rcpt in list(self.received)]

    def counts(self) -> Counter:
        return Counter(self.rcpts())

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` recipients were received; return whether they were."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.received) >= count:
                return True
            time.sleep(0.01)
        return len(self.received) >= count


@pytest.fixture
def sink():
    """A slow SMTP sink on loopback; set ``sink.handler.delay`` / ``refuse`` / ``hold_at`` before use."""
    controller = loopback_controller(SlowSink())
    controller.start()
    try:
        yield controller
    finally:
        controller.handler.release()
        controller.stop()


# Redis (Celery's broker, SITEMESSAGE_WAKEUP = 'redis://...') -------------------------------------------

REDIS_URL = os.environ.get('SITEMESSAGE_TEST_REDIS_URL', 'redis://127.0.0.1:6379/0')


def redis_url() -> str:
    """The test Redis' URL; a skip (a failure under SITEMESSAGE_TEST_STRICT) where it is not running."""
    pytest.importorskip('redis', reason='The Redis client is not installed: pip install "django-sitemessage[redis]"')
    try:
        socket.create_connection(('127.0.0.1', 6379), timeout=1).close()
    except OSError as error:
        pytest.skip(f'Redis is not reachable at 127.0.0.1:6379 ({error})')
    return REDIS_URL


# Databases ----------------------------------------------------------------------------------------


def _pg_connect():
    import psycopg

    return psycopg.connect(
        host=os.environ.get('SITEMESSAGE_PG_HOST', '127.0.0.1'),
        port=os.environ.get('SITEMESSAGE_PG_PORT', '5432'),
        user=os.environ.get('SITEMESSAGE_PG_USER', 'postgres'),
        password=os.environ.get('SITEMESSAGE_PG_PASSWORD', ''),
        dbname='postgres',
        autocommit=True,
        connect_timeout=5,
    )


def _drop_pg_database(name: str) -> None:
    with _pg_connect() as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def base_env(db_env: Dict[str, str]) -> Dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(('SITEMESSAGE_PROCESS_', 'PYTEST_', 'SITEMESSAGE_CELERY_'))
    }
    env.update(db_env)
    env.update(
        {
            'DJANGO_SETTINGS_MODULE': PROCESS_SETTINGS,
            'PYTHONUNBUFFERED': '1',
            'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])),
        }
    )
    return env


def _prepare(env: Dict[str, str]) -> None:
    for command in (['migrate', '--noinput', '-v', '0'], ['createcachetable', 'sitemessage_cache']):
        subprocess.run(
            [sys.executable, '-m', 'django', *command], env=env, cwd=REPO, check=True, capture_output=True, timeout=120
        )


@pytest.fixture(scope='session')
def _process_db_template(tmp_path_factory):
    """A migrated database (with the cache table) that each test's database is copied from."""
    if ON_POSTGRES:
        name = f'sm_proc_tpl_{uuid.uuid4().hex[:10]}'
        with _pg_connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        try:
            _prepare(base_env({'SITEMESSAGE_PROCESS_PG': name}))
            yield name
        finally:
            _drop_pg_database(name)
    else:
        path = tmp_path_factory.mktemp('process-db') / 'template.sqlite3'
        _prepare(base_env({'SITEMESSAGE_PROCESS_SQLITE': str(path)}))
        yield path


@pytest.fixture
def process_db(_process_db_template, tmp_path):
    """Environment variables naming a fresh, migrated database for subprocesses."""
    if ON_POSTGRES:
        name = f'sm_proc_{uuid.uuid4().hex[:12]}'
        with _pg_connect() as connection:
            connection.execute(f'CREATE DATABASE "{name}" TEMPLATE "{_process_db_template}"')
        try:
            yield {'SITEMESSAGE_PROCESS_PG': name}
        finally:
            _drop_pg_database(name)  # WITH (FORCE): also when a killed worker's session lingers
    else:
        path = tmp_path / 'db.sqlite3'
        shutil.copyfile(_process_db_template, path)
        yield {'SITEMESSAGE_PROCESS_SQLITE': str(path)}


# Processes ----------------------------------------------------------------------------------------


class Started:
    """A process started by :meth:`Processes.start`; its output goes to a file (no pipe to fill up)."""

    def __init__(self, popen: subprocess.Popen, log: Path):
        self.popen = popen
        self.log = log

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors='replace') if self.log.exists() else ''

    def wait_for_output(self, text: str, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output():
                return True
            if self.popen.poll() is not None:
                return text in self.output()
            time.sleep(0.02)
        return text in self.output()

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def signal(self, sig: int) -> None:
        self.popen.send_signal(sig)

    def summaries(self) -> List[Tuple[int, int, int, float]]:
        """The ``Sent: N, errors: N, failed: N, seconds: X`` lines printed so far."""
        return [(int(a), int(b), int(c), float(d)) for a, b, c, d in SUMMARY.findall(self.output())]


class Processes:
    """Runs Django commands and ORM snippets in subprocesses against one process database."""

    def __init__(self, db_env: Dict[str, str], tmp_path: Path):
        self.db_env = db_env
        self.tmp_path = tmp_path
        self.settings: Dict[str, object] = {}
        self.extra_env: Dict[str, str] = {}
        self.started: List[Started] = []

    def env(self, settings: Optional[dict] = None, extra_env: Optional[dict] = None) -> Dict[str, str]:
        """The subprocess environment: ``settings`` are ``SITEMESSAGE_<NAME>`` values (JSON-encoded)."""
        env = base_env(self.db_env)
        env.update(self.extra_env)
        env.update(extra_env or {})
        for name, value in {**self.settings, **(settings or {})}.items():
            env[f'SITEMESSAGE_PROCESS_{name}'] = value if isinstance(value, str) else json.dumps(value)
        return env

    def use_sink(self, sink, connections: int = 1) -> None:
        self.settings['SMTP_PORT'] = str(sink.port)
        self.settings['SMTP_CONNECTIONS'] = str(connections)

    def django(
        self, *args: str, settings: Optional[dict] = None, timeout: float = 60.0, check: bool = True
    ) -> subprocess.CompletedProcess:
        """Run ``python -m django <args>`` to completion."""
        result = subprocess.run(
            [sys.executable, '-m', 'django', *args],
            env=self.env(settings),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f'`django {" ".join(args)}` exited {result.returncode}:\n{result.stdout}\n{result.stderr}'
            )
        return result

    def start(
        self, *args: str, settings: Optional[dict] = None, module: str = 'django', extra_env: Optional[dict] = None
    ) -> Started:
        """Start ``python -m <module> <args>`` (default: a Django command) in the background."""
        log = self.tmp_path / f'process-{len(self.started)}.log'
        with open(log, 'wb') as stream:
            popen = subprocess.Popen(
                [sys.executable, '-m', module, *args],
                env=self.env(settings, extra_env),
                cwd=REPO,
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Started(popen, log)
        self.started.append(started)
        return started

    def orm(
        self,
        function: str,
        settings: Optional[dict] = None,
        extra_env: Optional[dict] = None,
        timeout: float = 60.0,
        **kwargs,
    ):
        """Run an ORM snippet of this module in a subprocess and return its JSON result."""
        result = subprocess.run(
            [sys.executable, '-m', 'tests.processes', function, json.dumps(kwargs)],
            env=self.env(settings, extra_env),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if result.returncode != 0:
            raise AssertionError(f'snippet {function}({kwargs}) exited {result.returncode}:\n{result.stderr}')
        return json.loads(result.stdout.strip().splitlines()[-1])

    def kill_all(self) -> None:
        for started in self.started:
            if started.popen.poll() is None:
                try:
                    os.killpg(started.popen.pid, signal.SIGKILL)  # the process and anything it forked
                except ProcessLookupError:
                    pass
            try:
                started.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a zombie we cannot reap
                pass


@pytest.fixture
def procs(process_db, tmp_path):
    processes = Processes(process_db, tmp_path)
    try:
        yield processes
    finally:
        processes.kill_all()


# ORM snippets (run in a subprocess with tests/process_settings.py) -----------------------------------


def schedule(count: int, prefix: str, mode: str = 'bulk', subject: str = 'Hello') -> dict:
    """Schedule ``count`` e-mails to ``<prefix>NNNN@example.com``.

    ``mode``: ``bulk`` -- one message per recipient in one bulk call; ``one`` -- one message to all;
    ``each`` -- one ``schedule()`` call per e-mail (what a project's code usually does).
    """
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.scheduling import schedule_pairs_in_bulk
    from sitemessage.toolbox import recipients, schedule_messages

    addresses = [address(prefix, index) for index in range(count)]
    if mode == 'bulk':
        schedule_pairs_in_bulk(
            [(EmailTextMessage(subject, f'Message to {to}'), recipients('smtp', to)) for to in addresses]
        )
    elif mode == 'one':
        schedule_messages(EmailTextMessage(subject, 'Message to all'), recipients('smtp', addresses))
    elif mode == 'each':
        for to in addresses:
            schedule_messages(EmailTextMessage(subject, f'Message to {to}'), recipients('smtp', to))
    else:
        raise ValueError(mode)
    return {'scheduled': count}


def schedule_telegram(count: int) -> dict:
    """Schedule one Telegram message to each of the chats ``1`` .. ``count``."""
    from sitemessage.messages.plain import PlainTextMessage
    from sitemessage.scheduling import schedule_pairs_in_bulk
    from sitemessage.toolbox import recipients

    schedule_pairs_in_bulk(
        [(PlainTextMessage(f'Message {chat}'), recipients('telegram', str(chat))) for chat in range(1, count + 1)]
    )
    return {'scheduled': count}


def status() -> dict:
    """Dispatch counts by status, and the addresses in each status."""
    from sitemessage.models import Dispatch

    counts = dict.fromkeys(STATUS_NAMES.values(), 0)
    addresses: Dict[str, List[str]] = {name: [] for name in STATUS_NAMES.values()}
    for dispatch_address, dispatch_status in Dispatch.objects.values_list('address', 'dispatch_status'):
        name = STATUS_NAMES[dispatch_status]
        counts[name] += 1
        addresses[name].append(dispatch_address)
    return {'counts': counts, 'addresses': addresses}


def subscribe_and_schedule(subscribers: int, messages: int) -> dict:
    """``subscribers`` address subscriptions to ``email_plain``; ``messages`` e-mails scheduled without recipients."""
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.models import Subscription
    from sitemessage.toolbox import schedule_messages

    Subscription.objects.bulk_create(
        Subscription(message_cls='email_plain', messenger_cls='smtp', address=address('fan', index))
        for index in range(subscribers)
    )
    for number in range(messages):
        schedule_messages(EmailTextMessage(f'Newsletter {number}', 'News'))
    return {'subscribers': subscribers, 'messages': messages}


def prepare() -> dict:
    """Run ``prepare_dispatches()``; the number of dispatches this process created."""
    from sitemessage.toolbox import prepare_dispatches

    return {'prepared': len(prepare_dispatches())}


def fanout() -> dict:
    """Per message: dispatches, distinct addresses, whether ready."""
    from django.db.models import Count

    from sitemessage.models import Message

    return {
        str(row['pk']): [row['dispatches'], row['addresses'], row['dispatches_ready']]
        for row in Message.objects.annotate(
            dispatches=Count('dispatch'), addresses=Count('dispatch__address', distinct=True)
        ).values('pk', 'dispatches', 'addresses', 'dispatches_ready')
    }


def schedule_once(key: str, start_at: float, hold: float) -> dict:
    """At ``start_at`` (time.time()), schedule an e-mail with the idempotency ``key``; the ids of what it returned.

    The transaction is held open ``hold`` seconds after the dispatches are written, so a process
    racing this one tries its key while this one's is not committed yet.
    """
    from sitemessage.messages.email import EmailTextMessage
    from sitemessage.signals import queue_changed
    from sitemessage.toolbox import recipients, schedule_messages

    queue_changed.connect(lambda **kwargs: time.sleep(hold), weak=False)
    time.sleep(max(start_at - time.time(), 0))
    results = schedule_messages(
        EmailTextMessage('Paid', 'Order 42 is paid'), recipients('smtp', 'buyer@example.com'), idempotency_key=key
    )
    return {'messages': [message.pk for message, _dispatches in results], 'finished': time.time()}


def _main(argv: List[str]) -> None:
    import django

    django.setup()
    function = globals()[argv[0]]
    kwargs = json.loads(argv[1]) if len(argv) > 1 else {}
    print(json.dumps(function(**kwargs)))


if __name__ == '__main__':
    _main(sys.argv[1:])

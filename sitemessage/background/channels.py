"""Wake-up channels: how a scheduling process tells idle workers that there is something to send.

``SITEMESSAGE_WAKEUP`` picks one (see :func:`get_channel`):

* ``'postgres'``: ``NOTIFY``/``LISTEN`` on the database connection itself (PostgreSQL only);
* ``'redis://...'`` (or ``'rediss://...'``): Redis pub/sub, for workers on other hosts;
* ``'local'``: UNIX datagram sockets in a directory on this host, one per waiting worker
  (SQLite, MariaDB/MySQL: databases that cannot notify);
* ``'poll'``: none, workers poll every ``SITEMESSAGE_WORKER_IDLE_SECONDS``;
* ``None`` (the default): ``'postgres'`` on PostgreSQL, ``'poll'`` on an in-memory SQLite database
  (no other process can share it), ``'local'`` elsewhere.

A channel's :meth:`Channel.announce` runs after the scheduling transaction commits, in the
scheduling process: it never blocks for long and never raises (a worker that missed a wake-up
finds the message on its next poll). :meth:`Channel.listen` is called by the worker.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import select
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from django.db import DEFAULT_DB_ALIAS, connections

from ..exceptions import SiteMessageConfigurationError
from ..optional import import_optional
from ..settings import get_setting

LOGGER = logging.getLogger('sitemessage.wakeup')  # the documented logger name
CHANNEL = 'sitemessage_queue'
# Installed on PostgreSQL by migration 0014: NOTIFY CHANNEL with every INSERT into the dispatch table.
INSERT_TRIGGER = 'sitemessage_dispatch_inserted_notify'
# Redis and local sockets answer within a millisecond on a healthy host; past this, give up on the wake-up.
ANNOUNCE_TIMEOUT = 0.5


class Listener:
    """A worker's end of a channel: :meth:`wait` returns early when work was announced."""

    def wait(self, timeout: float) -> bool:
        """Block up to ``timeout`` seconds for a wake-up; return whether one came (several count as one)."""
        time.sleep(timeout)
        return False

    def close(self) -> None:
        """Release what listening holds (a socket, a connection)."""


class Channel:
    """No wake-up: workers poll. Subclasses announce through something a worker can wait on."""

    name = 'poll'

    def announce(self, using: str) -> None:
        """Tell waiting workers there is new work; called after the commit, must not raise or block."""

    def listen(self, using: str) -> Optional[Listener]:
        """Start listening (None: this channel cannot wake anyone, the worker polls)."""
        return None

    def announces_inserts(self, using: str) -> bool:
        """Whether the database itself announces new dispatch rows, so :meth:`announce` need not."""
        return False

    def announce_safely(self, using: str) -> None:
        """Run :meth:`announce`, logging what fails: the message is committed and a later poll sends it."""
        try:
            self.announce(using)
        except Exception as error:
            LOGGER.warning(
                'Could not notify workers of new messages (%s: %s); they pick them up on their next pass.',
                type(error).__name__,
                error,
            )


class PostgresChannel(Channel):
    """``NOTIFY sitemessage_queue`` on the scheduling connection, ``LISTEN`` on the worker's."""

    name = 'postgres'
    # Per database (alias and name): does the NOTIFY trigger of migration 0014 exist there?
    _trigger_found: dict[tuple[str, str], bool] = {}

    def announce(self, using: str) -> None:
        with connections[using].cursor() as cursor:
            cursor.execute(f'NOTIFY {CHANNEL}')

    def announces_inserts(self, using: str) -> bool:
        """Whether the trigger is installed: looked up once per process and database.

        A database built without migrations (``--no-migrations`` in a project's tests) has none:
        there the scheduling process sends ``NOTIFY`` itself after the commit, as before.
        """
        connection = connections[using]
        key = (using, str(connection.settings_dict.get('NAME')))
        found = self._trigger_found.get(key)
        if found is None:
            with connection.cursor() as cursor:
                cursor.execute(
                    'SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %s '
                    "AND tgrelid = to_regclass('sitemessage_dispatch'))",
                    [INSERT_TRIGGER],
                )
                found = self._trigger_found[key] = bool(cursor.fetchone()[0])
        return found

    def listen(self, using: str) -> Optional[Listener]:
        return PostgresListener(using) if listen(using) else None


class PostgresListener(Listener):
    def __init__(self, using: str):
        self.using = using

    def wait(self, timeout: float) -> bool:
        return wait_for_work(timeout, self.using)


def listen(using: Optional[str] = None) -> bool:
    """Start listening for queue notifications; return False where the database cannot notify."""
    connection = connections[using or DEFAULT_DB_ALIAS]
    if connection.vendor != 'postgresql':
        return False
    with connection.cursor() as cursor:
        cursor.execute(f'LISTEN {CHANNEL}')
    return True


def wait_for_work(timeout: float, using: Optional[str] = None) -> bool:
    """Block up to ``timeout`` seconds for a queue notification; return whether one came.

    Without notifications (not PostgreSQL, or :func:`listen` not called) this just sleeps.
    """
    connection = connections[using or DEFAULT_DB_ALIAS]
    raw = connection.connection if connection.vendor == 'postgresql' else None
    if raw is None:
        time.sleep(timeout)
        return False
    if callable(getattr(raw, 'notifies', None)):  # psycopg 3
        notified = bool(list(raw.notifies(timeout=timeout, stop_after=1)))
        # Drain the rest: several schedulings while we slept need one wake-up only.
        while list(raw.notifies(timeout=0.01, stop_after=1)):
            pass
        return notified
    ready, _w, _x = select.select([raw], [], [], timeout)  # psycopg2
    if ready:
        raw.poll()
    notified = bool(raw.notifies)
    raw.notifies.clear()
    return notified


class RedisChannel(Channel):
    """Redis pub/sub: ``PUBLISH`` after the commit, each worker ``SUBSCRIBE``\\ d.

    The channel name carries a digest of the database's identity: pub/sub ignores Redis database
    numbers, so two projects sharing a Redis must not wake each other.
    """

    name = 'redis'
    _publishers: dict[str, Any] = {}  # one client (with its connection pool) per URL, per process

    def __init__(self, url: str):
        self.url = url
        self.redis = import_optional('redis', extra='redis')

    def _client(self) -> Any:
        client = self._publishers.get(self.url)
        if client is None:
            client = self.redis.Redis.from_url(
                self.url, socket_timeout=ANNOUNCE_TIMEOUT, socket_connect_timeout=ANNOUNCE_TIMEOUT
            )
            self._publishers[self.url] = client
        return client

    def announce(self, using: str) -> None:
        self._client().publish(channel_name(using), b'1')

    def listen(self, using: str) -> Optional[Listener]:
        return RedisListener(self, channel_name(using))


class RedisListener(Listener):
    """A subscription of its own; a lost Redis is logged once, waited out, and subscribed to again."""

    def __init__(self, channel: RedisChannel, name: str):
        self.channel = channel
        self.name = name
        self.client: Any = None
        self.pubsub: Any = None
        self.broken = False
        try:
            self._subscribe()  # now, before the worker's first pass, when Redis is up
        except self.channel.redis.RedisError:
            self.close()  # the first wait() tries again, and logs

    def _subscribe(self) -> None:
        # Held while subscribed: a client that is garbage-collected closes its pool's connections.
        self.client = self.channel.redis.Redis.from_url(self.channel.url, socket_connect_timeout=5)
        pubsub = self.client.pubsub()
        pubsub.subscribe(self.name)
        # Wait for the confirmation: a PUBLISH after it is ours for sure, one racing it may be lost.
        pubsub.get_message(timeout=5)
        pubsub.ignore_subscribe_messages = True
        self.pubsub = pubsub

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        try:
            if self.pubsub is None:
                self._subscribe()
            woken = False
            # get_message() also returns None early for what it skips (a confirmation, a pong).
            while not woken and (left := deadline - time.monotonic()) > 0:
                woken = self.pubsub.get_message(timeout=left) is not None
            while self.pubsub.get_message(timeout=0) is not None:  # several schedulings: one wake-up
                woken = True
        except self.channel.redis.RedisError as error:
            if not self.broken:
                LOGGER.warning(
                    'Redis wake-ups lost (%s: %s); polling until Redis is back.', type(error).__name__, error
                )
            self.broken = True
            self.close()
            time.sleep(max(0.0, deadline - time.monotonic()))
            return False
        if self.broken:
            LOGGER.warning('Redis wake-ups are back.')
            self.broken = False
        return woken

    def close(self) -> None:
        if self.pubsub is not None:
            try:
                self.pubsub.close()
            except Exception:  # closing a dead connection: nothing left to release
                pass
            self.pubsub = None
        if self.client is not None:
            self.client.close()
            self.client = None


class LocalChannel(Channel):
    """UNIX datagram sockets in one directory per database: each waiting worker binds one.

    Announcing sends one byte to every socket there without blocking; a socket nobody reads any
    more (its worker was killed) is removed. A full socket buffer means its worker has wake-ups
    pending already. Announcer and workers must run on the same host, with access to the directory.
    """

    name = 'local'

    def __init__(self, directory: Optional[str] = None):
        self.directory = directory

    def path(self, using: str) -> Path:
        return Path(self.directory or Path(tempfile.gettempdir()) / f'sitemessage-wakeup-{database_key(using)}')

    def announce(self, using: str) -> None:
        directory = self.path(using)
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:  # no worker has listened here yet
            return
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.setblocking(False)
            for entry in entries:
                if entry.name.endswith('.sock'):
                    _poke(sender, entry.path)

    def listen(self, using: str) -> Optional[Listener]:
        directory = self.path(using)
        path = directory / f'{os.getpid()}-{uuid.uuid4().hex[:8]}.sock'
        for _attempt in range(3):
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                return LocalListener(path, remove_directory=self.directory is None)
            except FileNotFoundError:  # the last worker's close() removed the empty directory meanwhile
                continue
        return LocalListener(path, remove_directory=self.directory is None)


def _poke(sender: socket.socket, path: str) -> None:
    try:
        sender.sendto(b'1', path)
    except (ConnectionRefusedError, FileNotFoundError):  # its worker is gone: nobody will read it again
        try:
            os.unlink(path)
        except OSError:
            pass
    except OSError as error:
        if error.errno not in (errno.EAGAIN, errno.ENOBUFS):  # full: that worker has a wake-up pending
            raise


class LocalListener(Listener):
    """A bound socket; with ``remove_directory`` the last one out removes the derived directory (never a set one)."""

    def __init__(self, path: Path, remove_directory: bool = False):
        self.path = path
        self.remove_directory = remove_directory
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.socket.bind(str(path))
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)

    def wait(self, timeout: float) -> bool:
        ready, _w, _x = select.select([self.socket], [], [], timeout)
        if not ready:
            return False
        while True:  # several schedulings while we slept need one wake-up only
            try:
                self.socket.recv(64)
            except BlockingIOError:
                return True

    def close(self) -> None:
        self.socket.close()
        try:
            self.path.unlink()
            if self.remove_directory:
                self.path.parent.rmdir()  # fails, as it should, while other workers listen there
        except OSError:
            pass


def database_key(using: str) -> str:
    """A short digest of what identifies the database: the same in every process that uses it."""
    settings = connections[using].settings_dict
    name = str(settings.get('NAME') or '')
    if connections[using].vendor == 'sqlite' and not _in_memory(name):
        name = os.path.realpath(name)
    identity = '|'.join(
        [connections[using].vendor, str(settings.get('HOST') or ''), str(settings.get('PORT') or ''), name]
    )
    return hashlib.sha1(identity.encode()).hexdigest()[:12]


def channel_name(using: str) -> str:
    return f'{CHANNEL}:{database_key(using)}'


def _in_memory(name: str) -> bool:
    return name in ('', ':memory:') or 'mode=memory' in name or name.startswith('file::memory:')


def get_channel(using: Optional[str] = None) -> Channel:
    """The channel ``SITEMESSAGE_WAKEUP`` names for database ``using``; a bad value raises at once."""
    using = using or DEFAULT_DB_ALIAS
    value = get_setting('WAKEUP')
    vendor = connections[using].vendor
    if value is None:
        if vendor == 'postgresql':
            value = 'postgres'
        elif vendor == 'sqlite' and _in_memory(str(connections[using].settings_dict.get('NAME') or '')):
            value = 'poll'
        else:
            value = 'local'
    if value == 'poll':
        return Channel()
    if value == 'local':
        return LocalChannel(get_setting('WAKEUP_DIR'))
    if value == 'postgres':
        if vendor != 'postgresql':
            raise SiteMessageConfigurationError(
                f"SITEMESSAGE_WAKEUP is 'postgres' but the database {using!r} is {vendor}: use 'local', "
                'a redis:// URL or None.'
            )
        return PostgresChannel()
    if isinstance(value, str) and value.startswith(('redis://', 'rediss://', 'unix://')):
        return RedisChannel(value)
    raise SiteMessageConfigurationError(
        f"SITEMESSAGE_WAKEUP must be None, 'postgres', 'local', 'poll' or a redis:// URL, got {_redacted(value)!r}."
    )


def _redacted(value: Any) -> Any:
    """Hide a password in a URL-like value before it goes into an error text."""
    if isinstance(value, str) and '@' in value:
        scheme, _, rest = value.partition('://')
        return f'{scheme}://***@{rest.rpartition("@")[2]}'
    return value

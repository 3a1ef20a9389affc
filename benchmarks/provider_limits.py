"""Benchmark of provider limits: a rate shared by two workers, a 429 pausing both, HTTP throughput.

Run from the repository root::

    .venv/bin/python benchmarks/provider_limits.py [--messages 450] [--http-messages 320] [--cache redis|db]

Part 1: two worker processes (``send_scheduled_messages()`` in a loop) deliver a queue of Telegram
messages to a local imitation of the Bot API that allows 30 messages a second (fixed one-second
windows) and answers the surplus with 429 and ``retry_after``. The workers share
``SITEMESSAGE_RATE_LIMITS = {'telegram': 30}`` and the pause through one cache (Redis at
127.0.0.1:6379 by default, or the database cache). Once both are sending, the imitation answers
one request with a 429 of ``--retry-after`` seconds: it prints the delivery rate outside that
pause (target: within 5 % of 30/s) and whether the pause stopped both workers.

Part 2: Telegram, Facebook, VK and X messengers over 8 connections
(``SITEMESSAGE_PARALLEL_CONNECTIONS``) against a local API answering every request after 50 ms,
beside raw ``requests`` (8 threads, a session each) posting the same number of requests in the
same run (target: ours >= 0.95x raw).

Both imitations run in processes of their own, so their CPU stays out of the senders' numbers.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

TOKEN = '123456789:AAH-benchmark-token'
LIMIT = 30
CONNECTIONS = 8
PROVIDERS = ('telegram', 'fb', 'vk', 'twitter')


# Imitations: one process each ------------------------------------------------------------------------


def _api_main(port_out, stop, log_out, limit: int, delay: float, retry_after: int) -> None:
    """Serve every provider's endpoints; with ``limit``, a Telegram limited to ``limit`` messages a second."""
    lock = threading.Lock()
    log = []  # (arrival, worker, status) of sendMessage
    windows: dict = {}
    forced = {'done': retry_after <= 0}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = 'HTTP/1.1'

        def log_message(self, *args):
            pass

        def _reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _handle(self):
            length = int(self.headers.get('Content-Length') or 0)
            if length:
                self.rfile.read(length)
            path = self.path.split('?')[0]
            if path.endswith('/sendMessage') and limit:
                now, worker = time.time(), self.headers.get('X-Worker', '')
                with lock:
                    senders = {who for _at, who, status in log if status == 200}
                    taken = windows[int(now)] = windows.get(int(now), 0) + 1
                    if not forced['done'] and len(senders) == 2 and len(log) >= 3 * LIMIT:
                        forced['done'], wait = True, retry_after  # the one 429 both must wait for
                    elif taken > limit:
                        wait = max(int(now) + 1 - now, 1)
                    else:
                        wait = 0
                    log.append((now, worker, 429 if wait else 200))
                if wait:
                    body = {'ok': False, 'error_code': 429, 'description': f'Too Many Requests: retry after {wait}'}
                    return self._reply(429, {**body, 'parameters': {'retry_after': int(round(wait))}})
            if delay:
                time.sleep(delay)
            if '/bot' in path:
                return self._reply(200, {'ok': True, 'result': {'message_id': 1}})
            if path.startswith('/method/'):
                return self._reply(200, {'response': {'post_id': 1} if 'wall' in path else [{'id': 1}]})
            if path.startswith('/2/'):
                return self._reply(201, {'data': {'id': '1', 'text': 'x'}})
            return self._reply(200, {'id': '1_2', 'name': 'Page'})

        do_GET = do_POST = _handle

    server = ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 64
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port_out.send(server.server_address[1])
    stop.wait()
    server.shutdown()
    with lock:
        log_out.send(log)


class API:
    """An imitation in a process of its own; ``stop()`` returns its sendMessage log."""

    def __init__(self, limit: int = 0, delay: float = 0.0, retry_after: int = 0):
        context = multiprocessing.get_context('spawn')
        port_in, port_out = context.Pipe(duplex=False)
        self.log_in, log_out = context.Pipe(duplex=False)
        self.stop_event = context.Event()
        args = (port_out, self.stop_event, log_out, limit, delay, retry_after)
        self.process = context.Process(target=_api_main, args=args, daemon=True)
        self.process.start()
        self.url = f'http://127.0.0.1:{port_in.recv()}'

    def stop(self) -> list:
        self.stop_event.set()
        log = self.log_in.recv()
        self.process.join(10)
        return log


# Django -------------------------------------------------------------------------------------------


def configure(spec: dict) -> None:
    import django
    from django.conf import settings

    if spec['cache'] == 'redis':
        cache = {'BACKEND': 'django.core.cache.backends.redis.RedisCache', 'LOCATION': spec['redis']}
    else:
        cache = {'BACKEND': 'django.core.cache.backends.db.DatabaseCache', 'LOCATION': 'bench_cache'}
    settings.configure(
        DEBUG=False,
        SECRET_KEY='provider-limits',
        USE_TZ=True,
        INSTALLED_APPS=['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage'],
        DATABASES={'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': spec['db'], 'OPTIONS': {'timeout': 60}}},
        CACHES={'default': cache},
        DEFAULT_AUTO_FIELD='django.db.models.AutoField',
        SITEMESSAGE_SITE_URL='https://example.com',
        **spec.get('settings', {}),
    )
    django.setup()


def messengers(url: str, worker: str = ''):
    """The four HTTP messengers, pointed at ``url``; Telegram's requests name the ``worker``."""
    from sitemessage.messengers.facebook import FacebookMessenger
    from sitemessage.messengers.telegram import TelegramMessenger
    from sitemessage.messengers.twitter import TwitterMessenger
    from sitemessage.messengers.vkontakte import VKontakteMessenger

    class Telegram(TelegramMessenger):
        def _new_session(self):
            session = super()._new_session()
            session.headers['X-Worker'] = worker
            return session

    return [
        Telegram(TOKEN, api_url=url, timeout=10),
        FacebookMessenger('EAABbenchtoken', api_url=url, timeout=10),
        VKontakteMessenger('vk1.a.benchtoken', api_url=url, timeout=10),
        TwitterMessenger('key', 'secret', 'token', 'token-secret', api_url=url, timeout=10),
    ]


def fill(alias: str, count: int) -> None:
    from sitemessage.messages.plain import PlainTextMessage
    from sitemessage.models import Dispatch, Message
    from sitemessage.scheduling import schedule_pairs_in_bulk
    from sitemessage.toolbox import recipients

    Dispatch.objects.all().delete()
    Message.objects.all().delete()
    schedule_pairs_in_bulk([(PlainTextMessage(f'Message {n}'), recipients(alias, str(n + 1))) for n in range(count)])


def pending() -> int:
    from sitemessage.models import Dispatch

    return Dispatch.objects.exclude(dispatch_status=Dispatch.DISPATCH_STATUS_SENT).count()


def _worker_main(spec: dict, name: str) -> None:
    configure(spec)
    from sitemessage.sending import send_scheduled_messages
    from sitemessage.toolbox import register_messenger_objects

    register_messenger_objects(messengers(spec['url'], name)[0])
    deadline = time.monotonic() + spec['timeout']
    while pending() and time.monotonic() < deadline:
        if not send_scheduled_messages().sent:
            time.sleep(0.05)  # all deferred or taken by the other worker: do not spin on the database


# Part 1 -------------------------------------------------------------------------------------------


def shared_rate(spec: dict, messages: int, retry_after: int) -> bool:
    api = API(limit=LIMIT, retry_after=retry_after)
    spec = {**spec, 'url': api.url, 'timeout': messages / LIMIT * 3 + 30}
    spec['settings'] = {'SITEMESSAGE_RATE_LIMITS': {'telegram': LIMIT}, 'SITEMESSAGE_SEND_BATCH_SIZE': 10}
    fill('telegram', messages)
    context = multiprocessing.get_context('spawn')
    workers = [context.Process(target=_worker_main, args=(spec, name)) for name in ('w1', 'w2')]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(spec['timeout'] + 30)
    log = api.stop()
    left = pending()

    sent = [(at, who) for at, who, status in log if status == 200]
    limited = [(at, who) for at, who, status in log if status == 429]
    forced = [(at, who) for at, who in limited if retry_after > 0][:1]
    times = sorted(at for at, _who in sent)
    pause_ok, pause, full = False, (0.0, 0.0), set(range(int(times[0]) + 1, int(times[-1]))) if times else set()
    if forced:
        start, end = forced[0][0], forced[0][0] + retry_after
        # A worker may finish the unit in flight (its last few requests) before it reads the pause.
        stopped = max([at for at in times if at <= start + 0.5], default=start)
        resumed = min([at for at in times if at > start + 0.5], default=end)
        pause = (stopped - start, resumed - start)
        pause_ok = stopped <= start + 0.5 and resumed >= end - 0.05
        full -= set(range(int(stopped), int(resumed) + 1))  # the windows the pause cut short
    elapsed = times[-1] - times[0] if times else 0.0
    per_window = [sum(1 for at in times if int(at) == window) for window in sorted(full)]
    rate = sum(per_window) / len(per_window) if per_window else 0.0
    by_worker = {who: sum(1 for _at, w in sent if w == who) for who in ('w1', 'w2')}
    print(f'Part 1: two workers, Telegram imitation limited to {LIMIT}/s, cache {spec["cache"]}')
    print(
        f'  delivered {len(sent)} of {messages} (left in queue: {left}; by worker {by_worker}) '
        f'in {elapsed:.2f} s; 429s: {len(limited)} ({len(limited) - len(forced)} from the 30/s limit)'
    )
    target = abs(rate - LIMIT) <= 0.05 * LIMIT
    print(
        f'  rate: {rate:.2f} msgs/s, the mean of {len(per_window)} full one-second windows outside the forced pause '
        f'(target {LIMIT} +/- 5 %): {"PASS" if target else "FAIL"}'
    )
    if forced:
        print(
            f'  one 429 (retry_after {retry_after} s, told to {forced[0][1]}): both workers stopped within '
            f'{pause[0]:.2f} s and sent again {pause[1]:.2f} s after it: {"PASS" if pause_ok else "FAIL"}'
        )
    return target and (pause_ok or not forced) and not left


# Part 2 -------------------------------------------------------------------------------------------


def raw_requests(url: str, count: int) -> float:
    import requests

    def post(n: int) -> None:
        with requests.Session() as session:
            for index in range(n):
                session.post(f'{url}/bot{TOKEN}/sendMessage', json={'chat_id': index, 'text': 'Hi'}, timeout=10)

    threads = [threading.Thread(target=post, args=(count // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count // CONNECTIONS * CONNECTIONS / (time.perf_counter() - started)


def throughput(spec: dict, count: int, repeat: int) -> bool:
    from sitemessage.sending import send_scheduled_messages
    from sitemessage.toolbox import register_messenger_objects

    api = API(delay=0.05)
    try:
        register_messenger_objects(*messengers(api.url))
        ours, raw = {}, {}
        for _round in range(repeat):
            for alias in PROVIDERS:  # raw right before each messenger: both see the same machine load
                raw[alias] = max(raw.get(alias, 0.0), raw_requests(api.url, count))
                fill(alias, count)
                started = time.perf_counter()
                report = send_scheduled_messages()
                ours[alias] = max(ours.get(alias, 0.0), report.sent / (time.perf_counter() - started))
                assert report.sent == count, f'{alias}: {report}'
    finally:
        api.stop()
    print(f'Part 2: {count} messages over {CONNECTIONS} connections, API answering after 50 ms (best of {repeat})')
    passed = True
    for alias, rate in ours.items():
        ok = rate >= 0.95 * raw[alias]
        passed = passed and ok
        print(
            f'  {alias:<9} {rate:6.1f} msgs/s, raw requests beside it {raw[alias]:6.1f} msgs/s: '
            f'{rate / raw[alias]:.3f}x (target >= 0.95x): {"PASS" if ok else "FAIL"}'
        )
    return passed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--messages', type=int, default=450, help='Telegram messages of part 1 (default 450: ~17 s)')
    parser.add_argument('--retry-after', type=int, default=2, help='seconds of the one forced 429 (0: none)')
    parser.add_argument('--http-messages', type=int, default=320, help='messages per messenger in part 2')
    parser.add_argument('--repeat', type=int, default=1, help='part 2 rounds; the best of each is shown')
    parser.add_argument('--cache', choices=('redis', 'db'), default='redis', help='the cache the workers share')
    parser.add_argument('--redis', default='redis://127.0.0.1:6379/14', help='Redis URL for --cache redis')
    parser.add_argument('--skip', choices=('1', '2'), help='skip part 1 or part 2')
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix='sm-provider-limits-')
    spec = {'db': os.path.join(workdir, 'db.sqlite3'), 'cache': args.cache, 'redis': args.redis}
    try:
        configure({**spec, 'settings': {'SITEMESSAGE_PARALLEL_CONNECTIONS': dict.fromkeys(PROVIDERS, CONNECTIONS)}})
        from django.core.cache import caches
        from django.core.management import call_command

        call_command('migrate', verbosity=0)
        if args.cache == 'db':
            call_command('createcachetable', verbosity=0)
        caches['default'].clear()
        from sitemessage.toolbox import register_messenger_objects

        register_messenger_objects(*messengers('http://127.0.0.1:9'))  # to schedule part 1's messages
        print(f'load average: {" ".join(f"{x:.2f}" for x in os.getloadavg())}')
        passed = True
        if args.skip != '1':
            passed = shared_rate(spec, args.messages, args.retry_after) and passed
        if args.skip != '2':
            caches['default'].clear()
            passed = throughput(spec, args.http_messages, args.repeat) and passed
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if passed else 1


if __name__ == '__main__':
    sys.exit(main())

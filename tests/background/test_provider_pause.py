"""Two real worker processes, one Telegram bot: a 429 told to one worker pauses the other too.

The workers (tests/processes.py) share the database cache (``SITEMESSAGE_RATE_LIMIT_CACHE``
defaults to ``default``, here a DatabaseCache table in the throw-away database) and speak to a
local imitation of the Bot API (tests/http_api.py) in this process, which tells them apart by the
``X-Worker`` header tests/processapp adds.
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from tests.http_api import LocalAPIServer, Reply

TOKEN = '123456789:AAH-process-token'
RETRY_AFTER = 3


class LimitingBot:
    """sendMessage answers after 15 ms; once both workers are sending, one request gets a 429."""

    def __init__(self, server: LocalAPIServer):
        self.lock = threading.Lock()
        self.log = []  # (time, worker pid, chat id, status)
        self.limited_at = None  # when the 429 was answered, and to whom
        self.limited_worker = None
        server.routes[('POST', f'/bot{TOKEN}/getMe')] = Reply(200, {'ok': True, 'result': {'id': 123456789}})
        server.routes[('POST', f'/bot{TOKEN}/sendMessage')] = self.send_message

    def send_message(self, request):
        worker, chat = request.headers.get('X-Worker'), request.json['chat_id']
        with self.lock:
            now = time.time()
            senders = Counter(who for _at, who, _chat, status in self.log if status == 200)
            if self.limited_at is None and len(senders) == 2 and min(senders.values()) >= 3:
                self.limited_at, self.limited_worker = now, worker
                self.log.append((now, worker, chat, 429))
                body = {'ok': False, 'error_code': 429, 'description': f'Too Many Requests: retry after {RETRY_AFTER}'}
                return Reply(429, {**body, 'parameters': {'retry_after': RETRY_AFTER}})
            self.log.append((now, worker, chat, 200))
        return Reply(200, {'ok': True, 'result': {'message_id': 1, 'chat': {'id': chat}}}, delay=0.015)

    def delivered(self):
        with self.lock:
            return [chat for _at, _who, chat, status in self.log if status == 200]


@pytest.fixture
def bot_api():
    server = LocalAPIServer(keep_alive=True).start()
    try:
        yield server, LimitingBot(server)
    finally:
        server.stop()


def test_slow_a_429_seen_by_one_worker_pauses_the_other(procs, bot_api):
    server, bot = bot_api
    procs.settings.update(TELEGRAM_URL=server.url, CACHE='db', SEND_BATCH_SIZE=3)
    procs.orm('schedule_telegram', count=90)

    workers = [procs.start('sitemessage_worker', '--idle', '0.2') for _ in range(2)]
    deadline = time.monotonic() + 60
    while len(set(bot.delivered())) < 90 and time.monotonic() < deadline:
        time.sleep(0.05)

    assert sorted(bot.delivered()) == list(range(1, 91)), [w.output() for w in workers]  # each once
    assert bot.limited_at is not None, 'the imitation never saw both workers sending'
    pids = {str(worker.pid) for worker in workers}
    other = (pids - {bot.limited_worker}).pop()
    start, end = bot.limited_at, bot.limited_at + RETRY_AFTER
    by_other = [at for at, who, _chat, _status in bot.log if who == other]
    assert any(at < start for at in by_other)  # it was sending when the other worker was told to wait
    # It stops within a unit of work (its batch of 3, or the pause's write on SQLite), then waits it out...
    during = [round(at - start, 3) for at in by_other if start + 0.5 < at < end - 0.05]
    assert during == [], f'the other worker kept sending {during} s into the pause'
    # ...and so does the one told: it sleeps, then retries; both go on after the pause.
    assert not [at for at, who, _c, _s in bot.log if who == bot.limited_worker and start + 0.05 < at < end - 0.05]
    assert any(at >= end - 0.05 for at in by_other)
    assert procs.orm('status')['counts']['sent'] == 90

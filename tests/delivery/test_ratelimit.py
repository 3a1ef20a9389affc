"""Rate limits (sitemessage/ratelimit.py) on a clock the tests move: no real waiting."""

from __future__ import annotations

import pytest
from django.core.cache import caches
from django.db import connection
from django.test.utils import override_settings

from sitemessage import ratelimit
from sitemessage.exceptions import SiteMessageConfigurationError
from sitemessage.models import Dispatch
from sitemessage.sending import send_scheduled_messages
from sitemessage.toolbox import recipients, schedule_messages


class Clock:
    """``ratelimit.CLOCK`` and ``ratelimit.SLEEP``: sleeping moves the time on, nothing waits.

    ``step`` is added after each reading (a cache that takes that long per call).
    """

    def __init__(self, now: float):
        self.now = now
        self.step = 0.0
        self.sleeps: list = []

    def time(self) -> float:
        now = self.now
        self.now += self.step
        return now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock(monkeypatch):
    caches['default'].clear()
    clock = Clock(1000.25)  # a quarter into a one-second window (binary-exact fractions below)
    monkeypatch.setattr(ratelimit, 'CLOCK', clock.time)
    monkeypatch.setattr(ratelimit, 'SLEEP', clock.sleep)
    yield clock
    caches['default'].clear()


# limit_for ------------------------------------------------------------------------------------


@override_settings(SITEMESSAGE_RATE_LIMITS={'smtp': 14, 'fake': 0.5}, SITEMESSAGE_RATE_LIMITS_PER_RECIPIENT={'smtp': 1})
def test_limit_for_reads_each_setting():
    assert ratelimit.limit_for('smtp') == 14.0 and isinstance(ratelimit.limit_for('smtp'), float)
    assert ratelimit.limit_for('fake') == 0.5
    assert ratelimit.limit_for('smtp', per_recipient=True) == 1.0
    assert ratelimit.limit_for('fake', per_recipient=True) is None
    assert ratelimit.limit_for('telegram') is None


def test_no_limits_configured_is_unlimited():
    assert ratelimit.limit_for('smtp') is None
    assert ratelimit.limit_for('smtp', per_recipient=True) is None


@pytest.mark.parametrize('value', [0, -3, True, '5', [1]])
@pytest.mark.parametrize('per_recipient, setting', [(False, 'RATE_LIMITS'), (True, 'RATE_LIMITS_PER_RECIPIENT')])
def test_limit_for_refuses_what_is_not_a_positive_number(value, per_recipient, setting):
    with override_settings(**{f'SITEMESSAGE_{setting}': {'smtp': value}}):
        with pytest.raises(SiteMessageConfigurationError, match=rf"SITEMESSAGE_{setting}\['smtp'\] must be a positive"):
            ratelimit.limit_for('smtp', per_recipient=per_recipient)


# acquire --------------------------------------------------------------------------------------


def test_slots_of_a_window_are_granted_at_once_then_the_next_one_is_waited_for(clock):
    assert [ratelimit.acquire('smtp', 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert clock.sleeps == []

    assert ratelimit.acquire('smtp', 3) == 0.75  # the rest of the window
    assert (clock.sleeps, clock.now) == ([0.75], 1001.0)
    assert [ratelimit.acquire('smtp', 3) for _ in range(2)] == [0.0, 0.0]  # 2 more slots of the new window
    assert ratelimit.acquire('smtp', 3) == 1.0
    assert clock.now == 1002.0


def test_slots_are_freed_as_time_advances(clock):
    assert ratelimit.acquire('smtp', 2) == 0.0
    assert ratelimit.acquire('smtp', 2) == 0.0
    clock.now += 0.5  # still the same window: full
    with pytest.raises(TimeoutError):
        ratelimit.acquire('smtp', 2, max_wait=0.1)
    clock.now += 0.25  # the next window
    assert ratelimit.acquire('smtp', 2) == 0.0
    assert ratelimit.acquire('smtp', 2) == 0.0
    assert clock.sleeps == []


def test_a_full_window_longer_than_max_wait_raises_without_sleeping(clock):
    ratelimit.acquire('smtp', 1)
    with pytest.raises(TimeoutError, match=r'Rate limit 1/s of `smtp` still full after 0.0 s'):
        ratelimit.acquire('smtp', 1, max_wait=0.5)  # 0.75 s to the next window
    assert clock.sleeps == []
    assert ratelimit.acquire('smtp', 1, max_wait=0.75) == 0.75  # exactly enough is enough


def test_max_wait_counts_every_window_waited(clock, monkeypatch):
    ratelimit.acquire('smtp', 1)

    def sleep_then_another_worker_takes_the_slot(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) <= 5:  # bounded, so that a wrong max_wait cannot loop for ever
            assert ratelimit.acquire('smtp', 1) == 0.0  # first in the new window: no wait

    monkeypatch.setattr(ratelimit, 'SLEEP', sleep_then_another_worker_takes_the_slot)
    with pytest.raises(TimeoutError, match=r'still full after 1.8 s'):
        ratelimit.acquire('smtp', 1, max_wait=2.5)
    assert clock.sleeps == [0.75, 1.0]  # a third window would pass max_wait: it gives up before


def test_under_one_a_second_the_window_is_longer_and_holds_one_slot(clock):
    assert ratelimit.acquire('telegram', 0.5) == 0.0  # window of 2 s: [1000, 1002)
    assert ratelimit.acquire('telegram', 0.5) == 1.75
    assert clock.now == 1002.0
    assert ratelimit.acquire('telegram', 0.25) == 0.0  # another rate is another quota: window [1000, 1004)
    assert ratelimit.acquire('telegram', 0.25) == 2.0


def test_one_recipients_limit_does_not_slow_another(clock):
    assert ratelimit.acquire('smtp:ann@example.com', 1) == 0.0
    with pytest.raises(TimeoutError):  # ann's quota is full for this window...
        ratelimit.acquire('smtp:ann@example.com', 1, max_wait=0.5)
    assert ratelimit.acquire('smtp:bob@example.com', 1) == 0.0  # ...bob's is not
    assert ratelimit.acquire('smtp:cid@example.com', 1) == 0.0
    assert clock.sleeps == []
    assert ratelimit.acquire('smtp:ann@example.com', 1) == 0.75
    assert clock.sleeps == [0.75]


def test_a_slot_taken_as_the_window_ended_is_not_used(clock):
    clock.now = 1000.75
    clock.step = 0.25  # the cache is slow: the window ends between taking the slot and using it
    assert ratelimit.acquire('smtp', 1) == 0.0
    # The slot of window 1000 was not used; window 1001's slot was taken instead: it is full now.
    clock.step = 0.0
    clock.now = 1001.5
    with pytest.raises(TimeoutError):
        ratelimit.acquire('smtp', 1, max_wait=0.1)


# Through the delivery engine ------------------------------------------------------------------


def addresses_delivered(messenger):
    return [address for address, _text in messenger.delivered]


@override_settings(SITEMESSAGE_RATE_LIMITS_PER_RECIPIENT={'fake': 1})
@pytest.mark.django_db
def test_per_recipient_limit_delays_only_that_recipients_next_message(clock, fake_messenger):
    schedule_messages('first', recipients('fake', ['ann', 'bob']))
    schedule_messages('second', recipients('fake', ['ann']))
    schedule_messages('third', recipients('fake', ['cid']))

    report = send_scheduled_messages()

    assert report.sent == 4
    assert sorted(addresses_delivered(fake_messenger)) == ['ann', 'ann', 'bob', 'cid']
    assert clock.sleeps == [0.75]  # ann's second message waited for her next window, nobody else did


@override_settings(SITEMESSAGE_RATE_LIMITS={'fake': 2})
@pytest.mark.django_db
def test_messenger_limit_spreads_a_batch_over_windows(clock, fake_messenger):
    schedule_messages('text', recipients('fake', [f'user{n}' for n in range(5)]))

    assert send_scheduled_messages().sent == 5
    assert clock.sleeps == [0.75, 1.0]  # 2 + 2 + 1
    assert clock.now == 1002.0


@override_settings(SITEMESSAGE_RATE_LIMITS_PER_RECIPIENT={'fake': 0.01})
@pytest.mark.django_db
def test_a_quota_full_for_longer_than_a_minute_leaves_the_rest_of_the_message_pending(clock, fake_messenger):
    schedule_messages('first', recipients('fake', ['ann']))
    schedule_messages('second', recipients('fake', ['ann', 'bob']))

    report = send_scheduled_messages()

    assert addresses_delivered(fake_messenger) == ['ann']
    assert clock.sleeps == []  # 100 s windows: the messenger does not wait that long
    # Not attempted: the rest of that message goes back to the queue untouched, for a later run.
    second = Dispatch.objects.exclude(dispatch_status=Dispatch.DISPATCH_STATUS_SENT).order_by('pk')
    assert [(d.address, d.dispatch_status, d.retry_count) for d in second] == [
        ('ann', Dispatch.DISPATCH_STATUS_PENDING, 0),
        ('bob', Dispatch.DISPATCH_STATUS_PENDING, 0),
    ]
    assert (report.sent, report.errors, report.failed) == (1, 0, 0)

    clock.now += 100  # ann's next window
    assert send_scheduled_messages().sent == 2
    assert sorted(addresses_delivered(fake_messenger)) == ['ann', 'ann', 'bob']
    assert clock.sleeps == []


# Django's database cache: incr() is a read then a write, each slot is confirmed by an add() ---------


@pytest.fixture
def db_cache(clock, transactional_db):
    from django.core.management import call_command

    settings = {
        'CACHES': {
            'default': {'BACKEND': 'django.core.cache.backends.locmem.LocMemCache'},
            'rl': {'BACKEND': 'django.core.cache.backends.db.DatabaseCache', 'LOCATION': 'test_rl_cache'},
        },
        'SITEMESSAGE_RATE_LIMIT_CACHE': 'rl',
    }
    with override_settings(**settings):
        call_command('createcachetable', 'test_rl_cache', verbosity=0)  # not flushed with the models' tables
        try:
            yield caches['rl']
        finally:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP TABLE {connection.ops.quote_name("test_rl_cache")}')


def test_database_cache_grants_each_slot_once(db_cache, clock):
    assert [ratelimit.acquire('smtp', 2) for _ in range(2)] == [0.0, 0.0]
    assert ratelimit.acquire('smtp', 2) == 0.75
    assert db_cache.get('sitemessage:rl:smtp:1.0:1000:1') == 1  # the confirmations of window 1000's slots
    assert db_cache.get('sitemessage:rl:smtp:1.0:1000:2') == 1


def test_database_cache_skips_a_slot_another_worker_confirmed(db_cache, clock):
    # Another worker's read-then-write incr() gave it slot 1 too, and it confirmed slot 1 first.
    db_cache.add('sitemessage:rl:smtp:1.0:1000:1', 1)

    assert ratelimit.acquire('smtp', 2) == 0.0  # slot 2
    assert ratelimit.acquire('smtp', 2) == 0.75  # the window held two slots, both are taken
    assert clock.sleeps == [0.75]


# Provider pauses (pause / paused_for) ---------------------------------------------------------

LOCMEM = {'BACKEND': 'django.core.cache.backends.locmem.LocMemCache', 'LOCATION': 'pauses'}
DBCACHE = {'BACKEND': 'django.core.cache.backends.db.DatabaseCache', 'LOCATION': 'sitemessage_pause_cache'}


@pytest.fixture(params=['locmem', 'db'])
def pause_cache(request, clock):
    """The shared cache of pauses: LocMemCache, or Django's database cache (a table of the test database)."""
    config = LOCMEM if request.param == 'locmem' else DBCACHE
    with override_settings(
        CACHES={'default': {'BACKEND': LOCMEM['BACKEND']}, 'pauses': config}, SITEMESSAGE_RATE_LIMIT_CACHE='pauses'
    ):
        if request.param == 'db':
            request.getfixturevalue('db')
            from django.core.management import call_command

            call_command('createcachetable', 'sitemessage_pause_cache', verbosity=0)
        caches['pauses'].clear()
        yield caches['pauses']
        caches['pauses'].clear()


def test_a_pause_is_seen_under_its_key_until_it_ends(pause_cache, clock):
    assert ratelimit.paused_for('telegram:abc') == 0.0

    until = ratelimit.pause('telegram:abc', 30)

    assert until == clock.now + 30
    assert ratelimit.paused_for('telegram:abc') == 30.0
    assert ratelimit.paused_for('telegram:other-bot') == 0.0  # per bot, not per messenger
    clock.now += 29.5
    assert ratelimit.paused_for('telegram:abc') == 0.5
    clock.now += 1
    assert ratelimit.paused_for('telegram:abc') == 0.0


def test_a_shorter_pause_does_not_cut_a_longer_one(pause_cache, clock):
    ratelimit.pause('vk:abc', 60)
    assert ratelimit.pause('vk:abc', 5) == clock.now + 60
    assert ratelimit.paused_for('vk:abc') == 60.0
    ratelimit.pause('vk:abc', 120)
    assert ratelimit.paused_for('vk:abc') == 120.0


def test_a_pause_is_one_cache_write_and_a_check_one_read(pause_cache, clock, monkeypatch):
    calls = []
    for name in ('get', 'set', 'add', 'incr'):
        original = getattr(pause_cache, name)
        monkeypatch.setattr(pause_cache, name, lambda *a, _n=name, _o=original, **k: calls.append(_n) or _o(*a, **k))
    ratelimit.pause('fb:abc', 10)
    assert calls == ['get', 'set']
    calls.clear()
    ratelimit.paused_for('fb:abc')
    assert calls == ['get']


@pytest.mark.django_db
def test_an_unreachable_cache_pauses_nobody_and_stops_nothing(clock, caplog):
    with override_settings(
        CACHES={'default': {'BACKEND': LOCMEM['BACKEND']}, 'pauses': {**DBCACHE, 'LOCATION': 'no_such_table'}},
        SITEMESSAGE_RATE_LIMIT_CACHE='pauses',
    ):
        asked_at = clock.now
        assert ratelimit.pause('x:abc', 10) == asked_at + 10
        assert clock.sleeps == [0.01, 0.02, 0.05, 0.1, 0.2]  # tried six times (SQLite's database cache refuses at once)
        assert ratelimit.paused_for('x:abc') == 0.0
    assert caplog.text.count('Could not share the pause of `x:abc`') == 1  # logged once, after the last try


@pytest.mark.django_db
def test_a_pause_write_refused_once_is_written_on_the_next_try(clock, caplog, monkeypatch):
    """Django's database cache on SQLite refuses a write at once while another process writes."""
    from django.core.cache import caches
    from django.db import OperationalError

    cache = caches['default']
    real_set, refusals = cache.set, []

    def set_once_refused(*args, **kwargs):
        if not refusals:
            refusals.append(args[0])
            raise OperationalError('database is locked')
        return real_set(*args, **kwargs)

    monkeypatch.setattr(cache, 'set', set_once_refused)
    asked_at = clock.now
    assert ratelimit.pause('x:abc', 10) == asked_at + 10
    assert refusals and clock.sleeps == [0.01]
    assert ratelimit.paused_for('x:abc') == pytest.approx(10 - 0.01)
    assert 'Could not share the pause' not in caplog.text

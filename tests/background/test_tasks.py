"""django.tasks support: a lazily built task that every backend can run, and an enqueue that never raises.

The tests of real backends need Django 6.0+ (django.tasks); on older Django they skip with a
reason starting "Django version:" (allowed in strict runs: CI runs this module on the newest Django as well).
"""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
import sys

import pytest
from django.test.utils import override_settings

from sitemessage.models import Dispatch
from sitemessage.toolbox import recipients, schedule_messages

HAS_DJANGO_TASKS = importlib.util.find_spec('django.tasks') is not None
needs_django_tasks = pytest.mark.skipif(not HAS_DJANGO_TASKS, reason='Django version: needs django.tasks (Django 6.0+)')

IMMEDIATE = {'default': {'BACKEND': 'django.tasks.backends.immediate.ImmediateBackend'}}
DUMMY = {'default': {'BACKEND': 'django.tasks.backends.dummy.DummyBackend'}}
NO_DEFAULT = {'other': {'BACKEND': 'django.tasks.backends.immediate.ImmediateBackend'}}


@pytest.fixture
def fresh_tasks():
    """sitemessage.tasks with no task built yet (each test sets its own TASKS)."""
    from sitemessage import tasks

    tasks._TASKS.clear()
    yield tasks
    tasks._TASKS.clear()


def _import_fresh(settings_tasks) -> subprocess.CompletedProcess:
    """Import sitemessage.tasks in a new process whose settings hold ``TASKS = settings_tasks`` (or none)."""
    code = (
        'import django\nfrom django.conf import settings\n'
        f'extra = {{"TASKS": {settings_tasks!r}}} if {settings_tasks!r} is not None else {{}}\n'
        'settings.configure(INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "sitemessage"],\n'
        '    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}, **extra)\n'
        'django.setup()\nimport sitemessage.tasks as t\n'
        'print("imported", t.__name__, t.celery_send_scheduled is not None)\n'
    )
    return subprocess.run(
        [sys.executable, '-c', code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, 'DJANGO_SETTINGS_MODULE': ''},
    )


@pytest.mark.parametrize('settings_tasks', [None, {}, NO_DEFAULT, IMMEDIATE])
def test_import_is_safe_with_any_tasks_setting(settings_tasks):
    result = _import_fresh(settings_tasks)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('imported sitemessage.tasks')


@pytest.mark.skipif(HAS_DJANGO_TASKS, reason='Django version: needs a Django without django.tasks (before 6.0)')
def test_without_django_tasks_the_task_is_none_and_enqueue_logs(caplog):
    from sitemessage import tasks

    assert tasks.django_send_scheduled is None
    with caplog.at_level(logging.ERROR, logger='sitemessage.tasks'):
        tasks.enqueue_send('django_tasks')

    assert 'could not enqueue the django.tasks send task' in caplog.text
    assert 'Django 6.0+' in caplog.text


def schedule_one(address='tasked'):
    return schedule_messages('hello', recipients('fake', address))[0]


@needs_django_tasks
@pytest.mark.django_db(transaction=True)
def test_immediate_backend_sends_on_commit(fake_messenger, fresh_tasks):
    with override_settings(TASKS=IMMEDIATE, SITEMESSAGE_ENQUEUE_ON_SCHEDULE='django_tasks'):
        message, _dispatches = schedule_one()

    assert fake_messenger.delivered == [('tasked', 'hello')]
    assert Dispatch.objects.get(message=message).dispatch_status == Dispatch.DISPATCH_STATUS_SENT


@needs_django_tasks
@pytest.mark.django_db
def test_task_path_leads_back_to_the_task(fresh_tasks):
    import copy
    import pickle

    from django.tasks import Task
    from django.utils.module_loading import import_string

    with override_settings(TASKS=DUMMY):
        task = fresh_tasks.django_send_scheduled

        assert isinstance(task, Task)
        assert task.module_path == 'sitemessage.tasks.django_send_scheduled'
        assert import_string(task.module_path) is task
        from sitemessage.tasks import django_send_scheduled  # as the docs show

        assert django_send_scheduled is task
        if '__reduce__' in Task.__dict__:  # Django 6.1+ pickles a Task as its path (6.0 backends store the path)
            assert pickle.loads(pickle.dumps(task)).func is task.func
        assert copy.deepcopy(task).func is task.func


@needs_django_tasks
@pytest.mark.django_db(transaction=True)
def test_dummy_backend_stores_the_enqueued_task(fresh_tasks):
    from django.tasks import default_task_backend

    with override_settings(TASKS=DUMMY, SITEMESSAGE_ENQUEUE_ON_SCHEDULE='django_tasks'):
        schedule_one()
        [result] = default_task_backend.results

    assert result.task.module_path == 'sitemessage.tasks.django_send_scheduled'
    assert list(result.args) == [None]  # the priority: all of them


@needs_django_tasks
@pytest.mark.django_db(transaction=True)
def test_enqueue_failure_is_logged_not_raised_into_the_scheduling_code(fake_messenger, fresh_tasks, caplog):
    with (
        override_settings(TASKS=NO_DEFAULT, SITEMESSAGE_ENQUEUE_ON_SCHEDULE='django_tasks'),
        caplog.at_level(logging.ERROR, logger='sitemessage.tasks'),
    ):
        message, _dispatches = schedule_one('kept')  # commits; the enqueue fails after it

    assert "the TASKS setting has no 'default' backend" in caplog.text
    # Nothing lost: the message is queued for the next run.
    assert Dispatch.objects.get(message=message).dispatch_status == Dispatch.DISPATCH_STATUS_PENDING
    assert fake_messenger.delivered == []


@needs_django_tasks
def test_real_queue_backend_and_its_worker_process_send_the_messages(procs, sink):
    """django-tasks-db stores the task path in its table; its ``db_worker`` imports the task from it."""
    pytest.importorskip('django_tasks_db')
    procs.use_sink(sink)
    procs.extra_env['DJANGO_SETTINGS_MODULE'] = 'tests.tasks_db_settings'
    procs.django('migrate', 'django_tasks_database', '--noinput', '-v', '0')

    procs.orm('schedule', count=3, prefix='dbtask', settings={'ENQUEUE_ON_SCHEDULE': 'django_tasks'})

    assert sink.handler.rcpts() == []  # only enqueued so far
    procs.django('db_worker', '--batch', '--no-startup-delay', timeout=120)
    results = procs.django(
        'shell',
        '-c',
        'from django_tasks_db.models import DBTaskResult as R; '
        'print([(r.task_path, r.status, r.return_value) for r in R.objects.all()])',
    )
    assert "('sitemessage.tasks.django_send_scheduled', 'SUCCESSFUL', " in results.stdout
    assert sorted(sink.handler.rcpts()) == [f'dbtask{index:04d}@example.com' for index in range(3)]
    assert procs.orm('status')['counts']['sent'] == 3

"""tests/process_settings.py plus a real django.tasks queue (django-tasks-db), for tests/background/test_tasks.py."""

from tests.process_settings import *  # noqa: F401,F403
from tests.process_settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, 'django_tasks_db']
TASKS = {'default': {'BACKEND': 'django_tasks_db.DatabaseBackend'}}

"""Settings of the real processes started by tests/background/test_worker.py (workers, commands, Celery).

Everything comes from the environment the fixture (tests/processes.py) builds:

- ``SITEMESSAGE_PROCESS_SQLITE``: path of an SQLite database file, or
  ``SITEMESSAGE_PROCESS_PG``: name of a PostgreSQL database at 127.0.0.1 (user postgres);
- ``SITEMESSAGE_PROCESS_CACHE``: ``db`` (DatabaseCache, table ``sitemessage_cache``), a directory
  (FileBasedCache), or empty (LocMemCache, per process);
- ``SITEMESSAGE_PROCESS_SMTP_PORT`` / ``SITEMESSAGE_PROCESS_SMTP_CONNECTIONS`` /
  ``SITEMESSAGE_PROCESS_TELEGRAM_URL``: see processapp;
- ``SITEMESSAGE_PROCESS_<NAME>``: the ``SITEMESSAGE_<NAME>`` setting, as JSON (``10``, ``{"smtp": 10}``)
  or a plain string (``celery``).
"""

import json
import os

SECRET_KEY = 'process-secret'
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ['*']
INSTALLED_APPS = ['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage', 'tests.processapp']
TEMPLATES = [{'BACKEND': 'django.template.backends.django.DjangoTemplates', 'APP_DIRS': True}]
DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
DEFAULT_FROM_EMAIL = 'robot@example.com'
ROOT_URLCONF = 'sitemessage.urls'
SITEMESSAGE_SITE_URL = 'https://process.example.com'

if os.environ.get('SITEMESSAGE_PROCESS_PG'):
    from tests.settings import postgres_database

    DATABASES = {'default': postgres_database(os.environ['SITEMESSAGE_PROCESS_PG'])}
elif os.environ.get('SITEMESSAGE_PROCESS_SQLITE'):
    # SQLite has one writer at a time: the others wait for the lock up to `timeout` seconds.
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.sqlite3',
            'NAME': os.environ['SITEMESSAGE_PROCESS_SQLITE'],
            'OPTIONS': {'timeout': float(os.environ.get('SITEMESSAGE_PROCESS_SQLITE_TIMEOUT', 30))},
        }
    }
else:
    raise RuntimeError('Set SITEMESSAGE_PROCESS_SQLITE (a file) or SITEMESSAGE_PROCESS_PG (a database name).')

_CACHE = os.environ.get('SITEMESSAGE_PROCESS_CACHE', '')
if _CACHE == 'db':
    CACHES = {'default': {'BACKEND': 'django.core.cache.backends.db.DatabaseCache', 'LOCATION': 'sitemessage_cache'}}
elif _CACHE:
    CACHES = {'default': {'BACKEND': 'django.core.cache.backends.filebased.FileBasedCache', 'LOCATION': _CACHE}}
else:
    CACHES = {'default': {'BACKEND': 'django.core.cache.backends.locmem.LocMemCache'}}

_PREFIX = 'SITEMESSAGE_PROCESS_'
_OWN = {'SQLITE', 'SQLITE_TIMEOUT', 'PG', 'CACHE', 'SMTP_PORT', 'SMTP_CONNECTIONS', 'TELEGRAM_URL'}
for _name, _raw in os.environ.items():
    if _name.startswith(_PREFIX) and _name[len(_PREFIX) :] not in _OWN:
        try:
            _value = json.loads(_raw)
        except ValueError:
            _value = _raw
        globals()[f'SITEMESSAGE_{_name[len(_PREFIX) :]}'] = _value

# Celery (tests/celery_app.py): broker and result backend in a Redis database chosen per test run.
CELERY_BROKER_URL = os.environ.get('SITEMESSAGE_CELERY_BROKER', 'redis://127.0.0.1:6379/0')
CELERY_RESULT_BACKEND = CELERY_BROKER_URL
CELERY_RESULT_EXPIRES = 600  # results of enqueued sends nobody reads do not linger in Redis
CELERY_TASK_DEFAULT_QUEUE = os.environ.get('SITEMESSAGE_CELERY_QUEUE', 'celery')

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'stderr': {'class': 'logging.StreamHandler'}},
    'loggers': {'sitemessage': {'handlers': ['stderr'], 'level': 'WARNING'}},
}

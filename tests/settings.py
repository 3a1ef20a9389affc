"""Settings of the test suite. ``SITEMESSAGE_TEST_DB=postgres`` (or ``mysql``) selects the database."""

import hashlib
import os
from pathlib import Path

SECRET_KEY = 'test-secret'
DEBUG = False
USE_TZ = True
ALLOWED_HOSTS = ['*']

INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'django.contrib.staticfiles',
    'sitemessage',
    'tests.testapp',
]

MIDDLEWARE = [
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
]

ROOT_URLCONF = 'tests.urls'
STATIC_URL = '/static/'

TEMPLATES = [
    {
        'BACKEND': 'django.template.backends.django.DjangoTemplates',
        'DIRS': [],
        'APP_DIRS': True,
        'OPTIONS': {
            'context_processors': [
                'django.template.context_processors.request',
                'django.contrib.auth.context_processors.auth',
                'django.contrib.messages.context_processors.messages',
            ]
        },
    }
]


def postgres_database(name: str) -> dict:
    """PostgreSQL at SITEMESSAGE_PG_HOST/PORT/USER/PASSWORD (default 127.0.0.1:5432, postgres)."""
    return {
        'ENGINE': 'django.db.backends.postgresql',
        'HOST': os.environ.get('SITEMESSAGE_PG_HOST', '127.0.0.1'),
        'PORT': os.environ.get('SITEMESSAGE_PG_PORT', '5432'),
        'USER': os.environ.get('SITEMESSAGE_PG_USER', 'postgres'),
        'PASSWORD': os.environ.get('SITEMESSAGE_PG_PASSWORD', ''),
        'NAME': name,
    }


_DB = os.environ.get('SITEMESSAGE_TEST_DB', 'sqlite')
# One test database per checkout: two clones testing at once (a CI run beside a developer's) would
# otherwise drop each other's database.
TEST_DATABASE_NAME = 'test_sitemessage_' + hashlib.sha1(str(Path(__file__).resolve().parent).encode()).hexdigest()[:8]
if _DB == 'postgres':
    DATABASES = {'default': {**postgres_database('sitemessage'), 'TEST': {'NAME': TEST_DATABASE_NAME}}}
elif _DB == 'mysql':  # MySQL or MariaDB, through PyMySQL (pure Python: nothing to compile)
    import pymysql

    pymysql.install_as_MySQLdb()
    DATABASES = {
        'default': {
            'ENGINE': 'django.db.backends.mysql',
            'HOST': os.environ.get('SITEMESSAGE_MYSQL_HOST', '127.0.0.1'),
            'PORT': os.environ.get('SITEMESSAGE_MYSQL_PORT', '3306'),
            'USER': os.environ.get('SITEMESSAGE_MYSQL_USER', 'root'),
            'PASSWORD': os.environ.get('SITEMESSAGE_MYSQL_PASSWORD', ''),
            'NAME': 'sitemessage',
            'TEST': {'NAME': TEST_DATABASE_NAME},
        }
    }
elif _DB == 'sqlite':
    DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': ':memory:', 'OPTIONS': {'timeout': 20}}}
else:
    raise RuntimeError(f'SITEMESSAGE_TEST_DB must be sqlite, postgres or mysql, got {_DB!r}')

DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'  # proves the app keeps its AutoField ids
DEFAULT_FROM_EMAIL = 'robot@example.com'
PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']  # fast test users
# Retries are due at once in most tests; backoff tests set their own delay (the default is 30 s).
SITEMESSAGE_RETRY_DELAY_SECONDS = 0
# ESP webhooks (tests/test_provider_status.py): basic auth for all, Mailgun's signing key for its signature.
ANYMAIL = {'WEBHOOK_SECRET': 'hook:s3cret', 'MAILGUN_WEBHOOK_SIGNING_KEY': 'mailgun-signing-key'}

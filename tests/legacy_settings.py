"""Settings of a project still on a database made by sitemessage 1.4.0 (see test_legacy_database.py).

The SQLite file is named by ``SITEMESSAGE_LEGACY_DB``; the secret is the one 1.4.0 signed links with.
"""

import os

SECRET_KEY = 'legacy-secret'
USE_TZ = True
ALLOWED_HOSTS = ['testserver']
INSTALLED_APPS = ['django.contrib.auth', 'django.contrib.contenttypes', 'sitemessage']
DATABASES = {'default': {'ENGINE': 'django.db.backends.sqlite3', 'NAME': os.environ['SITEMESSAGE_LEGACY_DB']}}
TEMPLATES = [{'BACKEND': 'django.template.backends.django.DjangoTemplates', 'APP_DIRS': True}]
ROOT_URLCONF = 'sitemessage.urls'
SITEMESSAGE_SITE_URL = 'https://legacy.example.com'
DEFAULT_FROM_EMAIL = 'robot@example.com'

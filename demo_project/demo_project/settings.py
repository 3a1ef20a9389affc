"""Settings of the sitemessage demo: SQLite, a local SMTP sink, DEBUG on. Not for production."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent  # demo_project/

PORT = int(os.environ.get('PORT', '8000'))
SMTP_PORT = int(os.environ.get('DEMO_SMTP_PORT', '2525'))

SECRET_KEY = 'demo-only-not-secret'
DEBUG = True
ALLOWED_HOSTS = ['127.0.0.1', 'localhost']

INSTALLED_APPS = [
    'django.contrib.admin',
    'django.contrib.auth',
    'django.contrib.contenttypes',
    'django.contrib.sessions',
    'django.contrib.messages',
    'django.contrib.staticfiles',
    'sitemessage',
    'demo',
]

MIDDLEWARE = [
    'django.middleware.security.SecurityMiddleware',
    'django.contrib.sessions.middleware.SessionMiddleware',
    'django.middleware.common.CommonMiddleware',
    'django.middleware.csrf.CsrfViewMiddleware',
    'django.contrib.auth.middleware.AuthenticationMiddleware',
    'django.contrib.messages.middleware.MessageMiddleware',
    'django.middleware.clickjacking.XFrameOptionsMiddleware',
]

ROOT_URLCONF = 'demo_project.urls'

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

WSGI_APPLICATION = 'demo_project.wsgi.application'

DATABASES = {
    'default': {
        'ENGINE': 'django.db.backends.sqlite3',
        'NAME': BASE_DIR / 'db.sqlite3',
        # runserver and the sender write to the same file: wait for each other's locks.
        'OPTIONS': {'timeout': 20},
    }
}

DEFAULT_AUTO_FIELD = 'django.db.models.BigAutoField'
USE_TZ = True
TIME_ZONE = 'UTC'
STATIC_URL = '/static/'
LOGIN_URL = 'login_as_demo'

# SMTPMessenger() without arguments reads these: the demo's own SMTP sink (mail_sink.py).
DEFAULT_FROM_EMAIL = 'Sitemessage demo <robot@demo.example.com>'
EMAIL_HOST = '127.0.0.1'
EMAIL_PORT = SMTP_PORT

# Links in messages (unsubscribe, mark read) point back to this very demo.
SITEMESSAGE_SITE_URL = f'http://127.0.0.1:{PORT}'
# The sender (sitemessage_worker) looks for due messages every 3 seconds (SQLite cannot wake it).
SITEMESSAGE_WORKER_IDLE_SECONDS = 3

# A failed attempt waits a little before the next one (exponential backoff with jitter).
SITEMESSAGE_RETRY_DELAY_SECONDS = 10

# Where mail_sink.py stores received e-mails, and the console messenger its messages.
DEMO_OUTBOX = BASE_DIR / 'outbox.jsonl'

LOGGING = {
    'version': 1,
    'disable_existing_loggers': False,
    'handlers': {'console': {'class': 'logging.StreamHandler'}},
    'loggers': {'sitemessage': {'handlers': ['console'], 'level': 'INFO'}},
}

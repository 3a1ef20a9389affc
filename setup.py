"""Packaging of django-sitemessage (``pip install django-sitemessage[<extras>]``)."""

import os
import re

from setuptools import find_packages, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def read(*parts):
    with open(os.path.join(HERE, *parts), encoding='utf-8') as handle:
        return handle.read()


def get_version():
    """Read ``VERSION = (2, 0, 0)`` from sitemessage/__init__.py without importing Django."""
    match = re.search(r'^VERSION\s*=\s*\(([\d,\s]+)\)', read('sitemessage', '__init__.py'), re.MULTILINE)
    if match is None:
        raise RuntimeError('VERSION tuple not found in sitemessage/__init__.py')
    return '.'.join(part.strip() for part in match.group(1).split(',') if part.strip())


EXTRAS = {
    'xmpp': ['slixmpp'],
    'twitter': ['requests-oauthlib', 'requests'],
    'telegram': ['requests'],
    'facebook': ['requests'],
    'vkontakte': ['requests'],
    'celery': ['celery[redis]'],
    'redis': ['redis'],  # SITEMESSAGE_WAKEUP = 'redis://...'
    # AnymailMessenger and delivery tracking from ESP webhooks (docs/provider-status.rst).
    'anymail': ['django-anymail>=13.0'],
    'apprise': ['apprise'],  # AppriseMessenger: Slack, Discord, Matrix, ntfy, ...
    'test': [
        'pytest',
        'hypothesis',
        'pytest-django',
        'aiosmtpd',
        'psycopg[binary]',
        'requests',
        'requests-oauthlib',
        'slixmpp',
        'celery[redis]',
        'playwright',
        'pymysql',
        'prometheus_client',
        'django-anymail>=13.0',
        'apprise',
        # A real django.tasks queue backend (it needs Django 5.2+; the newest-Django run has it).
        'django-tasks-db; python_version >= "3.12"',
    ],
    'docs': ['sphinx'],
    # `make lint`: pinned, so that a new release's rules never turn CI red on its own.
    'lint': ['ruff==0.17.6', 'mypy==2.4.1'],
    'prometheus': ['prometheus_client'],
    # `make demo`: only what demo_project needs besides Django (its SMTP sink).
    'demo': ['aiosmtpd'],
}

setup(
    name='django-sitemessage',
    version=get_version(),
    url='https://github.com/idlesign/django-sitemessage',
    description='Reusable application for Django introducing a message delivery framework',
    long_description=read('README.rst'),
    long_description_content_type='text/x-rst',
    license='BSD-3-Clause',
    author="Igor 'idle sign' Starikov and sitemessage contributors",
    packages=find_packages(include=['sitemessage', 'sitemessage.*']),
    include_package_data=True,
    zip_safe=False,
    python_requires='>=3.10',
    install_requires=['Django>=4.2,<6.2', 'idna>=3.0'],  # IDN e-mail domains (IDNA 2008)
    extras_require=EXTRAS,
    classifiers=[
        'Development Status :: 5 - Production/Stable',
        'Environment :: Web Environment',
        'Framework :: Django',
        'Framework :: Django :: 4.2',
        'Framework :: Django :: 5.2',
        'Framework :: Django :: 6.0',
        'Framework :: Django :: 6.1',
        'Intended Audience :: Developers',
        'License :: OSI Approved :: BSD License',
        'Operating System :: OS Independent',
        'Programming Language :: Python',
        'Programming Language :: Python :: 3',
        'Programming Language :: Python :: 3 :: Only',
        'Programming Language :: Python :: 3.10',
        'Programming Language :: Python :: 3.11',
        'Programming Language :: Python :: 3.12',
        'Programming Language :: Python :: 3.13',
        'Topic :: Communications',
        'Topic :: Communications :: Email',
    ],
)

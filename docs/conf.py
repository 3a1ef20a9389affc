"""Sphinx configuration of the sitemessage docs (``make docs``; offline, warnings are errors)."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# autodoc imports sitemessage, which needs configured Django: the test settings will do.
os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'tests.settings')
import django  # noqa: E402

django.setup()

import sitemessage  # noqa: E402

project = 'django-sitemessage'
author = 'sitemessage contributors'
copyright = 'sitemessage contributors'
release = '.'.join(str(part) for part in sitemessage.VERSION)
version = release

extensions = ['sphinx.ext.autodoc']
autodoc_member_order = 'bysource'
autodoc_typehints = 'none'

master_doc = 'index'
exclude_patterns = ['_build']
html_theme = 'alabaster'
html_title = f'django-sitemessage {release}'

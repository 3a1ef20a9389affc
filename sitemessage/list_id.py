"""The ``List-Id`` header (RFC 2919) of a message type's e-mails, built so it is always valid."""

from __future__ import annotations

import re
from email.utils import formataddr
from functools import lru_cache
from typing import Optional
from urllib.parse import urlsplit

from .site import get_site_url

# RFC 5322 atext: what a dot-atom label may hold; anything else becomes '-'.
_NOT_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_CONTROL = re.compile(r'[\x00-\x1f\x7f]+')
_LIST_ID_VALUE = re.compile(r"""[\x20-\x7e]*<[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+>""")


def list_id_namespace(site_url: Optional[str] = None) -> str:
    """Return the site's domain in ASCII (IDNA), or ``localhost`` (RFC 2919's unmanaged namespace)."""
    host = urlsplit(get_site_url() if site_url is None else site_url).hostname or ''
    try:
        host = host.encode('idna').decode('ascii')
    except UnicodeError:
        return 'localhost'
    labels = [label for label in host.split('.') if label]
    if not labels or any(_NOT_ATEXT.search(label) for label in labels) or host.replace('.', '').isdigit():
        return 'localhost'  # an IP address or garbage names no domain
    return '.'.join(labels)


def default_list_id(title, alias: str) -> str:
    """Return ``Title <alias.site-domain>``: the label made of atext, the title RFC 2047-encoded if not ASCII."""
    return _list_id(str(title or ''), str(alias), get_site_url())


@lru_cache(maxsize=256)
def _list_id(title: str, alias: str, site_url: str) -> str:
    # Made for every e-mail: kept by what it is made of (the title in the active language, the site URL).
    label = _NOT_ATEXT.sub('-', alias.lower()).strip('-') or 'sitemessage'
    phrase = ' '.join(_CONTROL.sub(' ', title).split())
    list_id = f'{label}.{list_id_namespace(site_url)}'
    return formataddr((phrase, list_id), charset='utf-8') if phrase else f'<{list_id}>'


def check_list_id(value: str, message_type: str) -> str:
    """Return a ``List-Id`` value when it is a single ASCII line ending in ``<label.namespace>``; else raise."""
    if not _LIST_ID_VALUE.fullmatch(value):
        raise ValueError(
            f'{message_type}.get_list_id() returned {value!r}: a List-Id must be one ASCII line '
            'ending in <label.namespace> (RFC 2919).'
        )
    return value

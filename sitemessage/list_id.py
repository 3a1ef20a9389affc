"""The ``List-Id`` header (RFC 2919) of a message type's e-mails, built so it is always valid."""
from __future__ import annotations

import re
from email.utils import formataddr
from urllib.parse import urlsplit

from .utils import get_site_url

# RFC 5322 atext: what a dot-atom label may hold; anything else becomes '-'.
_NOT_ATEXT = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_CONTROL = re.compile(r'[\x00-\x1f\x7f]+')
_LIST_ID_VALUE = re.compile(r"""[\x20-\x7e]*<[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+\.[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]+>""")


def list_id_namespace() -> str:
    """Return the site's domain in ASCII (IDNA), or ``localhost`` (RFC 2919's unmanaged namespace)."""
    host = urlsplit(get_site_url()).hostname or ''
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
    label = _NOT_ATEXT.sub('-', str(alias).lower()).strip('-') or 'sitemessage'
    phrase = ' '.join(_CONTROL.sub(' ', str(title or '')).split())
    list_id = f'{label}.{list_id_namespace()}'
    return formataddr((phrase, list_id), charset='utf-8') if phrase else f'<{list_id}>'


def check_list_id(value: str, message_type: str) -> str:
    """Return a ``List-Id`` value when it is a single ASCII line ending in ``<label.namespace>``; else raise."""
    if not _LIST_ID_VALUE.fullmatch(value):
        raise ValueError(f'{message_type}.get_list_id() returned {value!r}: a List-Id must be one ASCII line '
                         'ending in <label.namespace> (RFC 2919).')
    return value

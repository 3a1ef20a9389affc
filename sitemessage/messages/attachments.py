"""E-mail attachments: stored once in a Django storage when scheduled, read when each e-mail is built.

The message context holds only a reference per attachment (``filename``, ``mimetype``, storage
``path``, ``size``), so a claimed batch stays small however large the files are; the SMTP
messenger reads an attachment when it builds the e-mails of its message (once per message,
whatever the number of recipients), and drops it before the next message.

Accepted forms, as Django's ``EmailMessage.attach()`` / ``attach_file()`` take them:

* ``(filename, content)`` or ``(filename, content, mimetype)``: ``content`` is ``bytes``, a ``str``
  (stored as UTF-8) or a binary file object; it is stored in ``SITEMESSAGE_ATTACHMENT_STORAGE``;
* an open file object with a ``name`` (``open('report.pdf', 'rb')``, an ``UploadedFile``): stored
  the same way, read in chunks;
* a ``pathlib.Path``: a local file, stored the same way;
* a ``str``: a path that already exists in ``SITEMESSAGE_ATTACHMENT_STORAGE``, referenced as it
  is (not copied: keep it there until the e-mail is sent).

Anything else, a missing storage path or a filename/MIME type that could break a header, is
refused with a ``ValueError`` naming it, before anything is stored.
"""

from __future__ import annotations

import mimetypes
import os
import re
from pathlib import Path
from typing import IO, Any, Dict, Iterable, List, NamedTuple, Optional, Union
from uuid import uuid4

from django.core.exceptions import SuspiciousFileOperation
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages
from django.utils.text import get_valid_filename

from ..headers import UnsafeHeaderValueError, check_header_value
from ..settings import get_setting

#: What ``attachments=`` takes (see the module docstring).
TypeAttachment = Union[tuple, IO, str, Path]

_MIMETYPE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$')


class Attachment(NamedTuple):
    """An attachment checked and ready to store: ``content`` is None for a storage path referenced as is."""

    filename: str
    mimetype: str
    content: Any  # bytes, a file object, or None
    path: Optional[str] = None


def attachment_storage() -> Storage:
    """The storage of attachments (``SITEMESSAGE_ATTACHMENT_STORAGE``, a key of Django's ``STORAGES``)."""
    return storages[get_setting('ATTACHMENT_STORAGE', check='text')]


def store_attachments(items: Optional[Iterable[TypeAttachment]]) -> List[Dict[str, Any]]:
    """Check every attachment, then store those given as content; return their references for the context."""
    if not items:
        return []
    if isinstance(items, (str, bytes, Path, tuple)) or hasattr(items, 'read'):
        raise ValueError(f'`attachments` must be a list of attachments, got {items!r}.')
    storage = attachment_storage()
    checked = [check_attachment(item, storage) for item in items]  # all refused before any is stored
    return [store_attachment(attachment, storage) for attachment in checked]


def check_attachment(item: Any, storage: Storage) -> Attachment:
    """Turn one accepted form into an :class:`Attachment`; refuse anything else naming it."""
    if isinstance(item, tuple) and len(item) in (2, 3):
        filename, content, mimetype = (*item, None) if len(item) == 2 else item
        if not isinstance(filename, str) or not filename:
            raise ValueError(f'Attachment {item!r}: the filename must be a non-empty string.')
        if isinstance(content, str):
            content = content.encode('utf-8')
        elif not isinstance(content, (bytes, bytearray, memoryview)) and not hasattr(content, 'read'):
            raise ValueError(
                f'Attachment {filename!r}: unsupported content of type {type(content).__name__} '
                '(give bytes, a str or a file object).'
            )
        return _checked(filename, mimetype, content if hasattr(content, 'read') else bytes(content))
    if isinstance(item, Path):
        if not item.is_file():
            raise ValueError(f'Attachment file {str(item)!r} does not exist.')
        return _checked(item.name, None, item)
    if isinstance(item, str):
        if not item or not storage.exists(item):
            raise ValueError(f'Attachment {item!r} does not exist in storage {get_setting("ATTACHMENT_STORAGE")!r}.')
        return _checked(os.path.basename(item) or 'attachment', None, None, path=item)
    if hasattr(item, 'read'):
        name = os.path.basename(str(getattr(item, 'name', '') or ''))
        if not name:
            raise ValueError(f'Attachment {item!r} has no name: give it as (filename, file).')
        return _checked(name, None, item)
    raise ValueError(
        f'Unsupported attachment {item!r} (a {type(item).__name__}): give (filename, content[, mimetype]), '
        'an open file, a pathlib.Path or a path in the attachment storage.'
    )


def _checked(filename: str, mimetype: Optional[str], content: Any, path: Optional[str] = None) -> Attachment:
    try:
        check_header_value('Attachment filename', filename)  # it goes into Content-Disposition
    except UnsafeHeaderValueError as error:
        raise ValueError(str(error)) from error
    mimetype = mimetype or mimetypes.guess_type(filename)[0] or 'application/octet-stream'
    if not isinstance(mimetype, str) or not _MIMETYPE.match(mimetype):
        raise ValueError(f'Attachment {filename!r}: {mimetype!r} is not a MIME type such as "application/pdf".')
    return Attachment(filename, mimetype, content, path)


def store_attachment(attachment: Attachment, storage: Storage) -> Dict[str, Any]:
    """Write one attachment's content in the storage (in chunks); return its reference."""
    path = attachment.path
    if path is None:
        try:
            safe_name = get_valid_filename(attachment.filename)
        except SuspiciousFileOperation:
            safe_name = 'attachment'
        name = f'{get_setting("ATTACHMENT_DIRECTORY")}/{uuid4().hex}/{safe_name}'
        if isinstance(attachment.content, Path):
            with attachment.content.open('rb') as local:
                path = storage.save(name, File(local), max_length=None)
        else:
            path = storage.save(name, _as_file(attachment.content), max_length=None)
    reference = {'filename': attachment.filename, 'mimetype': attachment.mimetype, 'path': path}
    reference['size'] = storage.size(path)
    if attachment.path is None:
        reference['owned'] = True  # written here: deleted with its message (a path given is the project's)
    return reference


def _as_file(content: Any) -> File:
    if isinstance(content, bytes):
        return ContentFile(content)
    if isinstance(content.read(0), str):  # a text-mode file: its text, as UTF-8
        return ContentFile(content.read().encode('utf-8'))
    return File(content)


def read_attachment(reference: Dict[str, Any]) -> bytes:
    """The bytes of a stored attachment (read when its e-mail is built)."""
    with attachment_storage().open(reference['path'], 'rb') as stored:
        return stored.read()


#: The key of the message context holding the references (a template cannot read a name starting with _).
CONTEXT_KEY = '_attachments'


def attachments_of(context: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The attachment references of a message context (none for messages scheduled without)."""
    return list(context.get(CONTEXT_KEY) or ())


def delete_owned_attachments(contexts: Iterable[Dict[str, Any]]) -> None:
    """Delete the files stored for these (deleted) messages; paths the project gave are left alone."""
    storage = None
    for context in contexts:
        for reference in attachments_of(context):
            if reference.get('owned'):
                storage = storage or attachment_storage()
                storage.delete(reference['path'])

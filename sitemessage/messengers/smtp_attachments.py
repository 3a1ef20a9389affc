"""MIME parts of e-mail attachments, built once per message from the stored files.

Each part is base64 whatever its type, so every attachment arrives byte for byte (a text
part re-encoded as text could have its line ends changed on the way). A non-ASCII filename
is written as RFC 2231 asks (``filename*=utf-8''...``).
"""

from __future__ import annotations

from email import encoders
from email.mime.base import MIMEBase
from typing import Any, Dict, List

from ..exceptions import PermanentDeliveryError
from ..messages.attachments import attachments_of, read_attachment


def attachment_part(reference: Dict[str, Any], data: bytes) -> MIMEBase:
    """One attachment as a MIME part (shared by every e-mail of its message: parts are not changed when written)."""
    maintype, _slash, subtype = reference['mimetype'].partition('/')
    part = MIMEBase(maintype, subtype)
    part.set_payload(data)
    encoders.encode_base64(part)
    filename = reference['filename']
    part.add_header(
        'Content-Disposition', 'attachment', filename=filename if filename.isascii() else ('utf-8', '', filename)
    )
    return part


def attachment_parts(context: Dict[str, Any]) -> List[MIMEBase]:
    """The MIME parts of a message's attachments, read from the storage now.

    A file gone from the storage fails the e-mail for good (retrying cannot bring it back),
    naming the file; other storage errors are left to the caller (retried).
    """
    parts = []
    for reference in attachments_of(context):
        try:
            data = read_attachment(reference)
        except FileNotFoundError as error:
            raise PermanentDeliveryError(
                f'Attachment {reference["filename"]!r} is missing from the storage ({reference["path"]!r})'
            ) from error
        parts.append(attachment_part(reference, data))
        del data  # the part holds the encoded copy only
    return parts

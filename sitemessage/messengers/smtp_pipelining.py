"""SMTP command pipelining (RFC 2920) on top of ``smtplib``: fewer round trips per e-mail.

``smtplib`` waits for the reply to each command: four round trips an e-mail (MAIL, RCPT, DATA,
content). A server that offers PIPELINING lets the client send MAIL, RCPT and DATA in one go,
and send the content of one e-mail followed at once by the envelope of the next. A stream of
e-mails then costs about one round trip each. Refusals raise what ``sendmail`` raises
(``SMTPSenderRefused``, ``SMTPRecipientsRefused``, ``SMTPDataError``).
"""

from __future__ import annotations

import re
import smtplib
from typing import Optional, Tuple

PLAIN_ADDRESS = re.compile(  # a bare address, no display name nor quoting
    r'[^@\s<>"(),;:\0]+@[^@\s<>"(),;:\0]+\Z'
)
_DOT_AT_LINE_START = re.compile(rb'(?m)^\.')

Reply = Tuple[int, bytes]


def can_pipeline(smtp: smtplib.SMTP, sender: str, recipient: str) -> bool:
    """Whether this e-mail may go pipelined: the server offers it and both addresses are ASCII.

    Only an ``smtplib.SMTP`` connection: any other object (a test's stand-in) gets ``sendmail()``.
    """
    return (
        isinstance(smtp, smtplib.SMTP)
        and bool(smtp.has_extn('pipelining'))
        and sender.isascii()
        and recipient.isascii()
    )


def write_envelope(smtp: smtplib.SMTP, sender: str, recipient: str, size: int) -> None:
    """Send MAIL, RCPT and DATA in one write, without waiting for any reply."""
    size_option = f' SIZE={size}' if smtp.has_extn('size') else ''
    smtp.send(f'MAIL FROM:{quote_address(sender)}{size_option}\r\nRCPT TO:{quote_address(recipient)}\r\nDATA\r\n')


def read_envelope_replies(smtp: smtplib.SMTP, sender: str, recipient: str) -> Optional[smtplib.SMTPException]:
    """Read the three replies of :func:`write_envelope`; return the refusal, if any, with the transaction ended.

    None means the server waits for the content (354). After a refusal the transaction is reset
    (RSET), except when the server answered DATA with 354 all the same: it then holds a
    transaction we did not mean (Postfix after an end-of-data refusal left unreset: ``503 nested
    MAIL``, and the recipient joins the old transaction). Any content, even a lone ``.``, would be
    delivered, so the connection is closed instead: the server discards an unfinished DATA.
    The refusal then carries ``ours = True`` (see :func:`is_sequencing_refusal`).
    """
    mail_reply, rcpt_reply, data_reply = smtp.getreply(), smtp.getreply(), smtp.getreply()
    if mail_reply[0] != 250:
        refusal: smtplib.SMTPException = smtplib.SMTPSenderRefused(mail_reply[0], mail_reply[1], sender)
    elif rcpt_reply[0] not in (250, 251):
        refusal = smtplib.SMTPRecipientsRefused({recipient: rcpt_reply})
    elif data_reply[0] != 354:
        refusal = smtplib.SMTPDataError(*data_reply)
    else:
        return None
    # The first refusal a 503 (not a 503 to DATA after a refused RCPT, as aiosmtpd and Exim answer)
    first_refused = next(code for code in (mail_reply[0], rcpt_reply[0], data_reply[0]) if code not in (250, 251, 354))
    refusal.ours = first_refused == 503 or data_reply[0] == 354  # type: ignore[attr-defined]  # see is_sequencing_refusal()
    if data_reply[0] == 354:
        smtp.close()  # never end a DATA we did not want: closing discards it
    else:
        abandon_transaction(smtp, mail_reply[0], rcpt_reply[0], data_reply[0])
    return refusal


def is_sequencing_refusal(refusal: BaseException) -> bool:
    """Whether a refusal answers the state of the session (503 bad sequence) rather than this e-mail."""
    return bool(getattr(refusal, 'ours', False))


def write_content(smtp: smtplib.SMTP, data: bytes) -> None:
    """Send the message content, dot-stuffed, and the final ``.``, without waiting for the reply."""
    ending = b'.\r\n' if data.endswith(b'\r\n') else b'\r\n.\r\n'
    smtp.send(_DOT_AT_LINE_START.sub(b'..', data) + ending)


def content_refusal(smtp: smtplib.SMTP, reply: Reply) -> Optional[smtplib.SMTPDataError]:
    """Return the refusal carried by the reply to the content (None: accepted)."""
    if reply[0] == 250:
        return None
    if reply[0] == 421:
        smtp.close()  # the server is closing the connection
    return smtplib.SMTPDataError(*reply)


def send_pipelined(smtp: smtplib.SMTP, sender: str, recipient: str, data: bytes) -> dict:
    """``smtp.sendmail(sender, [recipient], data)`` in two round trips instead of four."""
    write_envelope(smtp, sender, recipient, len(data))
    refusal = read_envelope_replies(smtp, sender, recipient)
    if refusal is None:
        write_content(smtp, data)
        refusal = content_refusal(smtp, smtp.getreply())
        if refusal is None:
            return {}
        if smtp.sock is not None:
            abandon_transaction(smtp)
    raise refusal


def abandon_transaction(smtp: smtplib.SMTP, *codes: int) -> None:
    """RSET after a refusal so the connection stays usable; close it if the server said 421."""
    if 421 in codes:
        smtp.close()
        return
    try:
        smtp.rset()
    except smtplib.SMTPServerDisconnected:
        pass


def quote_address(address: str) -> str:
    return f'<{address}>' if PLAIN_ADDRESS.match(address) else smtplib.quoteaddr(address)

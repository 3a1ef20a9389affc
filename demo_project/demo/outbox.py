"""The demo's outbox file: JSON lines written by mail_sink.py (e-mails) and ConsoleMessenger."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from email import message_from_string, policy
from pathlib import Path
from typing import List

_URL = re.compile(r'https?://[^\s<>"\'()]+[^\s<>"\'().,;:!?]')


def append(path: Path, record: dict) -> None:
    """Add one record (``transport`` says who wrote it) to the outbox file."""
    record = {'received': datetime.now(timezone.utc).isoformat(timespec='seconds'), **record}
    with open(path, 'a', encoding='utf-8') as handle:
        handle.write(json.dumps(record, ensure_ascii=False) + '\n')


def read(path: Path, limit: int = 30) -> List[dict]:
    """Return the latest records, newest first; e-mails are parsed into headers and parts."""
    if not path.exists():
        return []
    lines = path.read_text(encoding='utf-8').splitlines()[-limit:]
    return [_describe(json.loads(line)) for line in reversed(lines) if line.strip()]


def _describe(record: dict) -> dict:
    if record.get('transport') != 'smtp':
        record['links'] = _URL.findall(record.get('text', ''))
        return record
    msg = message_from_string(record['data'], policy=policy.default)
    text_part = msg.get_body(preferencelist=('plain',))
    html_part = msg.get_body(preferencelist=('html',))
    record.update(
        {
            'headers': [(name, str(value)) for name, value in msg.items()],
            'subject': str(msg.get('Subject', '')),
            'text': text_part.get_content() if text_part is not None else '',
            'html': html_part.get_content() if html_part is not None else '',
            'list_unsubscribe': str(msg.get('List-Unsubscribe', '')).strip().strip('<>'),
            'one_click': 'One-Click' in str(msg.get('List-Unsubscribe-Post', '')),
        }
    )
    # <base target="_top">: a link clicked in the preview opens in the page, not inside the frame.
    record['html_srcdoc'] = f'<base target="_top">{record["html"]}' if record['html'] else ''
    record['links'] = _URL.findall(record['text'])
    return record

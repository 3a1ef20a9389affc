"""Anymail's own test backend, answering as an ESP does: a Message-ID-like id, and refusals of some addresses."""

from __future__ import annotations

from uuid import uuid4

from anymail.backends.test import EmailBackend as AnymailTestBackend
from anymail.message import AnymailRecipientStatus

#: address -> anymail recipient status ('rejected', 'invalid') the "ESP" answers for it.
REFUSE: dict = {}


class EmailBackend(AnymailTestBackend):
    esp_name = 'Test'

    def get_esp_message_id(self, message):
        return f'<{uuid4().hex}@mg.example.com>'

    def post_to_esp(self, payload, message):
        response = super().post_to_esp(payload, message)
        for email in payload.recipient_emails:
            if email in REFUSE:
                response['recipient_status'][email] = AnymailRecipientStatus(message_id=None, status=REFUSE[email])
        return response

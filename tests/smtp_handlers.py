"""Base of the aiosmtpd handlers used by tests (no Django imports: subprocess helpers use it too)."""


class RefusingHandler:
    """Base of the aiosmtpd handlers in tests: ``refuse`` maps an address to its RCPT reply."""

    def __init__(self):
        self.refuse: dict = {}  # address -> SMTP reply, e.g. '550 No such user'

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.refuse.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return '250 OK'

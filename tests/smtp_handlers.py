"""Base of the aiosmtpd handlers used by tests (no Django imports: subprocess helpers use it too)."""


class RefusingHandler:
    """Base of the aiosmtpd handlers in tests: ``refuse`` maps an address to its RCPT reply.

    The server offers PIPELINING (RFC 2920), as production relays do, unless ``pipelining``
    is set to False; aiosmtpd handles pipelined commands in order but does not offer it itself.
    """

    def __init__(self):
        self.refuse: dict = {}  # address -> SMTP reply, e.g. '550 No such user'
        self.pipelining = True

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            return responses[:-1] + ['250-PIPELINING', responses[-1]]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.refuse.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return '250 OK'

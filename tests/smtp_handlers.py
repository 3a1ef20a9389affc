"""Base of the aiosmtpd handlers used by tests (no Django imports: subprocess helpers use it too)."""


class RefusingHandler:
    """Base of the aiosmtpd handlers in tests: ``refuse`` maps an address to its RCPT reply.

    The server offers PIPELINING (RFC 2920), as production relays do, unless ``pipelining``
    is set to False; aiosmtpd handles pipelined commands in order but does not offer it itself.

    ``rcpt_log`` keeps, for each RCPT, the client's address and the bytes it had already sent
    after that command: a client waiting for each reply has sent nothing more; a pipelining one
    has sent DATA (at least) in the same write.
    """

    def __init__(self):
        self.refuse: dict = {}  # address -> SMTP reply, e.g. '550 No such user'
        self.pipelining = True
        self.rcpt_log: list = []  # (client's (host, port), bytes received but not read yet)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.pipelining:
            return responses[:-1] + ['250-PIPELINING', responses[-1]]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_log.append((session.peer, bytes(server._reader._buffer)))  # aiosmtpd reads its buffer so too
        reply = self.refuse.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return '250 OK'


def loopback_controller(handler, **kwargs):
    """An aiosmtpd ``Controller`` on 127.0.0.1 at a port the system gives it when it binds; ``port`` is set by start().

    No port is picked beforehand, so nothing else can take it in between (aiosmtpd would connect
    to port 0 to check the server is up: the port it got is read from the socket first).
    """
    from aiosmtpd.controller import Controller

    class LoopbackController(Controller):
        def _trigger_server(self):
            self.port = self.server.sockets[0].getsockname()[1]
            super()._trigger_server()

    return LoopbackController(handler, hostname='127.0.0.1', port=0, **kwargs)

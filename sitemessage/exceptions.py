"""Exceptions raised by sitemessage; the hierarchy is the documented one of 1.4.0."""

from __future__ import annotations


class SiteMessageError(Exception):
    """Base class for sitemessage errors."""


class SiteMessageConfigurationError(SiteMessageError):
    """This error is raised on configuration errors."""


class UnknownMessageTypeError(SiteMessageError):
    """This error is raised when there's a try to access an unknown message type."""


class MessengerException(SiteMessageError):
    """Base messenger exception."""


class UnknownMessengerError(MessengerException):
    """This error is raised when there's a try to access an unknown messenger."""


class MessengerWarmupException(MessengerException):
    """This exception represents a delivery error due to a messenger warm up process failure."""


class PermanentDeliveryError(MessengerException):
    """A delivery error that retrying cannot fix (e.g. an SMTP 5xx refusal): the dispatch fails at once."""


class TemporaryDeliveryError(MessengerException):
    """A delivery error worth retrying later; ``retry_after`` (seconds) is the service's own hint."""

    def __init__(self, message: str = '', retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class SchedulingValueError(SiteMessageError, ValueError):
    """A scheduling option is refused (a naive ``send_at``, ``expires_at`` before ``send_at``, a bad idempotency key).

    Raised by ``schedule_messages()`` and the shortcuts before anything is stored.
    """


class SchedulingTypeError(SchedulingValueError, TypeError):
    """A scheduling option has the wrong type (``send_at`` that is not a datetime, a key that is not a string)."""


class RecipientRefusedError(PermanentDeliveryError):
    """The service refused the recipient's address for good (no such mailbox, a blocked bot).

    Fails the dispatch at once, like :class:`PermanentDeliveryError`, and counts toward
    suppressing the address (``SITEMESSAGE_SUPPRESS_AFTER_FAILURES``, see :doc:`suppression`);
    a refusal of the message itself (its content, the sender) should not use it.
    """

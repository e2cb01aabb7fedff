"""One error tree, split by retryability.

``RetryableError`` means "the same call may succeed later" (a service was unavailable, a rate limit
was hit): tasks retry it with backoff and a cap. ``PermanentError`` means "retrying cannot help"
(bad input, a misconfigured model): the item or batch is marked failed with the reason.
"""


class MedbatchError(Exception):
    """Base of every error medbatch raises on purpose."""


class RetryableError(MedbatchError):
    """A transient failure: retry later."""


class BrokerUnavailable(RetryableError):
    """The message broker (Redis) could not be reached."""


class DatabaseUnavailable(RetryableError):
    """The SQL database could not be reached or dropped the connection."""


class WrongDatabase(RetryableError):
    """A message staged in another database reached a worker configured for this one (misconfiguration).

    Retried, so another worker (the right one) can take it; never processed here.
    """


class RateLimited(RetryableError):
    """An outside service asked us to slow down."""

    def __init__(self, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(MedbatchError):
    """A failure that retrying cannot fix."""


class InvalidInput(PermanentError):
    """Input that cannot be processed; the message says what to fix."""


class ModelMisconfigured(PermanentError):
    """No usable model: missing, unregistered, tampered with, or of the wrong kind."""


class NotFound(PermanentError):
    """A job, batch or model that does not exist."""

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


class ProviderUnavailable(RetryableError):
    """The report provider did not answer usefully this time: HTTP 5xx, 408/409, a timeout or a dropped connection.

    Retried per report by ``pipeline.reports.call_with_retries`` (backoff, ``llm_max_attempts`` tries);
    still failing after the last try, the report becomes an item error and the batch goes on.
    """


class BatchNotFinished(RetryableError):
    """A Batch API job has not reached a final state yet; poll again later."""


class PermanentError(MedbatchError):
    """A failure that retrying cannot fix."""


class InvalidInput(PermanentError):
    """Input that cannot be processed; the message says what to fix."""


class ImageRejected(InvalidInput):
    """The file is not a radiograph this reader can use; the message says why."""


class ModelMisconfigured(PermanentError):
    """No usable model: missing, unregistered, tampered with, or of the wrong kind."""


class NotFound(PermanentError):
    """A job, batch or model that does not exist."""


class WrongWorkload(PermanentError):
    """A message for one workload's task names a batch or job of another workload: refused, nothing changed."""


class InvalidModelOutput(PermanentError):
    """The model answered, but not with a usable report: refusal, empty, truncated, malformed.

    ``reason`` is a short code (``refusal``, ``empty``, ``truncated``, ``content_filter``,
    ``missing_sections``, ``malformed``, ``batch_error``) suitable for an item error's reason.
    """

    def __init__(self, message: str, reason: str = "invalid_output"):
        super().__init__(message)
        self.reason = reason


class ProviderRejected(PermanentError):
    """The provider refused the request itself (HTTP 4xx other than 429): bad key, unknown model, bad request."""

    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class InvalidFhirResource(PermanentError):
    """A FHIR resource medbatch built fails the library's structure check or its own binding/range checks."""


class PacsUnavailable(RetryableError):
    """A PACS (DICOMweb or DIMSE) could not be reached, timed out or answered 5xx/429: try again later."""


class PacsRefused(PermanentError):
    """A PACS answered and refused a request or an object; the message carries its reason."""


class FhirServerUnavailable(RetryableError):
    """A FHIR server (``export fhir --to``) could not be reached, timed out or answered 5xx/429: try again later."""


class FhirServerRefused(PermanentError):
    """A FHIR server answered and refused a transaction; the message carries its status and reason."""


class MissingExtra(InvalidInput):
    """A workload or command needs an optional dependency (a pip extra) that is not installed; the message names
    the extra to install (``medbatch/extras.py``). Refused before anything is staged or consumed."""

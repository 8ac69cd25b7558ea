"""The error types of aitp: each carries what a person needs to act on it."""


class AitpError(Exception):
    """Base of every error aitp raises on purpose."""


class ConfigError(AitpError):
    """A configuration value is unusable; startup stops with exit code 2."""

    def __init__(self, key: str, value: object, expected: str, source: str = "") -> None:
        self.key, self.value, self.expected, self.source = key, value, expected, source
        where = f" (from {source})" if source else ""
        super().__init__(f"bad configuration: {key}={value!r}{where}: expected {expected}")


class ContractError(AitpError):
    """The task API or a task broke the contract in ../shared/CONTRACT.md."""


class TaskApiError(AitpError):
    """The task API could not be reached or answered with an error."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class AuthError(AitpError):
    """No bearer token could be had; the message never holds the secret."""


class ProviderError(AitpError):
    """An embedding provider failed for one batch.

    `input_specific` marks failures that one input can cause (Ollama answers a whole batch with
    500 for one NaN and 400 for one over-long input): such a batch is split and retried so that
    only the guilty task fails. `retryable` is false for errors that a retry cannot mend.
    `retry_after` is the wait the provider asked for (429 with Retry-After), in seconds.
    `counts_as_outage` says whether the failure speaks about the provider's health (and so counts
    against its circuit breaker) rather than about one input or our own rate.
    """

    def __init__(self, message: str, *, provider: str, status: int | None = None,
                 input_specific: bool = False, retryable: bool = True, retry_after: float | None = None,
                 counts_as_outage: bool | None = None) -> None:
        super().__init__(message)
        self.provider, self.status = provider, status
        self.input_specific, self.retryable, self.retry_after = input_specific, retryable, retry_after
        if counts_as_outage is None:
            # No answer at all, a server error or a refused key; not a bad input and not a 429.
            counts_as_outage = status is None or status >= 500 or status in (401, 403)
        self.counts_as_outage = counts_as_outage

    def __reduce__(self):
        # Keyword-only arguments would be lost by the default pickling of exceptions.
        return (_rebuild_provider_error, (str(self), self.__dict__))


def _rebuild_provider_error(message: str, state: dict) -> ProviderError:
    error = ProviderError.__new__(ProviderError)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class VectorContractError(AitpError):
    """A provider's response broke the vector contract (count, dimension, garbage)."""


class RowContractError(VectorContractError):
    """Some vectors of a well-formed response are unusable (NaN, infinity, all zeros): the fault may
    lie with one input, so the batch is split like after an input-specific provider error."""


class DimensionMismatch(VectorContractError):
    """Vectors of another length than the model's pinned dimension: never truncated or padded."""

    def __init__(self, got: int, pinned: int) -> None:
        super().__init__(f"returned dimension {got}, pinned at {pinned}")
        self.got, self.pinned = got, pinned

    def __reduce__(self):
        return (DimensionMismatch, (self.got, self.pinned))


class CoordinationError(AitpError):
    """Redis, which several services share for leases, results, limits and breakers, did not answer."""

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
    """

    def __init__(self, message: str, *, provider: str, status: int | None = None,
                 input_specific: bool = False, retryable: bool = True) -> None:
        super().__init__(message)
        self.provider, self.status = provider, status
        self.input_specific, self.retryable = input_specific, retryable


class VectorContractError(AitpError):
    """A provider's response broke the vector contract (count, dimension, NaN, zero)."""

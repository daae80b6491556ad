"""The exception tree of the runtime service; each maps to one gRPC status code."""


class RuntimeServiceError(Exception):
    """Base of every runtime-service error."""


class NotFoundError(RuntimeServiceError):
    """No sandbox or container with that ID (or prefix)."""


class AlreadyExistsError(RuntimeServiceError):
    """A sandbox or container with that name already exists."""


class InvalidArgumentError(RuntimeServiceError):
    """A request the runtime cannot act on as given (bad mount, bad profile, bad user)."""


class FailedPreconditionError(RuntimeServiceError):
    """The object is in a state that does not allow the call (start a running container)."""


class ExecutorError(RuntimeServiceError):
    """The OCI executor (runc, or conmon around it) failed; the message carries its stderr."""


class NetworkError(RuntimeServiceError):
    """The pod network could not attach or detach a sandbox; the message has the plugin's error."""

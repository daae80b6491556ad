"""The exception tree of the OCI executor; `cli` turns each into one line on stderr."""

from __future__ import annotations


class OCIError(Exception):
    """Base of every executor error. `step` names what was being done."""

    def __init__(self, message: str, *, step: str = "") -> None:
        super().__init__(message)
        self.step = step

    def line(self, container_id: str = "") -> str:
        """`container 3f2a…: mount proc on /proc: Operation not permitted`."""
        parts = []
        if container_id:
            parts.append(f"container {container_id}")
        if self.step:
            parts.append(self.step)
        parts.append(str(self))
        return ": ".join(parts)


class UsageError(OCIError):
    """The command line is wrong (unknown flag, missing container ID)."""


class SpecError(OCIError):
    """config.json (or an exec process file) is not a spec we can carry out."""


class NotFoundError(OCIError):
    """No container with that ID under --root. The text says "does not exist", as runc's."""


class StateError(OCIError):
    """The container is in a state that does not allow the command (start a stopped one)."""


class SysError(OCIError):
    """A system call failed while carrying out the spec; the step says which one."""


def os_error(step: str, err: OSError) -> SysError:
    """A SysError for a failed call, with the errno's text as the message."""
    return SysError(err.strerror or str(err), step=step)

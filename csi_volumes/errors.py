"""The exception tree of `csi_volumes`.

Every failure a CSI call can end in is a `CsiCallError` carrying the gRPC status code
the CSI spec prescribes for it (INVALID_ARGUMENT for a missing field, NOT_FOUND for an
unknown volume, ALREADY_EXISTS for an incompatible repeat, ...). The gRPC servicers turn
it into the call's status; everything else that escapes a handler is INTERNAL.
"""

from enum import IntEnum


class Code(IntEnum):
    """gRPC status codes, by the numbers the CSI spec's error tables use."""

    OK = 0
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class CsiVolumesError(Exception):
    """Base of every error raised by csi_volumes."""


class CsiCallError(CsiVolumesError):
    """A CSI call failed with a spec-defined status code."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class S3Error(CsiCallError):
    """The S3 server refused or failed a request; `s3_code` is its code (e.g. NoSuchBucket)."""

    def __init__(self, code: Code, message: str, *, s3_code: str) -> None:
        super().__init__(code, message)
        self.s3_code = s3_code


class MountError(CsiCallError):
    """A FUSE mount, bind mount or unmount failed."""

    def __init__(self, message: str, *, code: Code = Code.INTERNAL) -> None:
        super().__init__(code, message)


def invalid_argument(message: str) -> CsiCallError:
    return CsiCallError(Code.INVALID_ARGUMENT, message)


def not_found(message: str) -> CsiCallError:
    return CsiCallError(Code.NOT_FOUND, message)


def failed_precondition(message: str) -> CsiCallError:
    return CsiCallError(Code.FAILED_PRECONDITION, message)


def already_exists(message: str) -> CsiCallError:
    return CsiCallError(Code.ALREADY_EXISTS, message)

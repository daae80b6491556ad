"""Which CSI volume capabilities the S3 driver serves (pure).

Any access mode works on S3 (many nodes may read and write one bucket); only the
mount access type does (there is no block device). `*_READER_ONLY` modes mount read-only.
"""

from collections.abc import Sequence

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.errors import Code, CsiCallError, invalid_argument

_Mode = csi_pb2.VolumeCapability.AccessMode
READ_ONLY_MODES = frozenset({_Mode.SINGLE_NODE_READER_ONLY, _Mode.MULTI_NODE_READER_ONLY})


def unsupported_reason(cap: csi_pb2.VolumeCapability) -> str:
    """Why `cap` cannot be served ("" when it can)."""
    if cap.WhichOneof("access_type") == "block":
        return "block access is not supported by an S3 volume (mount only)"
    if cap.WhichOneof("access_type") != "mount":
        return "volume capability has no access type (mount or block)"
    if cap.access_mode.mode == _Mode.UNKNOWN:
        return "volume capability has no access mode"
    return ""


def check_capabilities(
    caps: Sequence[csi_pb2.VolumeCapability], *, call: str, code: Code = Code.INVALID_ARGUMENT
) -> None:
    if not caps:
        raise invalid_argument(f"{call}: volume_capabilities is required")
    for cap in caps:
        reason = unsupported_reason(cap)
        if reason:
            raise CsiCallError(code, f"{call}: {reason}")


def is_read_only(cap: csi_pb2.VolumeCapability) -> bool:
    return cap.access_mode.mode in READ_ONLY_MODES

"""Pure translation of what a CO sends into what the S3 driver does.

StorageClass parameters (CreateVolume), volume context (NodeStage/NodePublish), secrets
and volume ids become typed values here, with no I/O, so every rule is unit-tested
without root or an S3 server. Neighbours: `controller.py` and `node.py` call these;
`mounters.py` turns the results into FUSE command lines.

Volume ids: a bucket-per-volume volume is `<bucket>`; a prefix-per-volume volume is
`<bucket>/<prefix>`. Bucket names cannot contain `/`, so the id parses back unambiguously.
"""

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from csi_volumes.errors import CsiCallError, invalid_argument, not_found

#: parameters the external-provisioner convention reserves; never ours to interpret.
RESERVED_PREFIX = "csi.storage.k8s.io/"

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,253}$")
_IPV4_RE = re.compile(r"^\d+\.\d+\.\d+\.\d+$")


class Layout(StrEnum):
    """Where a volume lives: a bucket of its own, or a prefix inside a shared bucket."""

    BUCKET = "bucket"
    PREFIX = "prefix"


class Mounter(StrEnum):
    S3FS = "s3fs"
    RCLONE = "rclone"


class CacheMode(StrEnum):
    """Local caching of file data: none, or a disk cache (s3fs use_cache / rclone VFS)."""

    NONE = "none"
    WRITES = "writes"
    FULL = "full"


@dataclass(frozen=True)
class VolumeRef:
    bucket: str
    prefix: str = ""  # "" for a bucket-per-volume volume

    @property
    def volume_id(self) -> str:
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def layout(self) -> Layout:
        return Layout.PREFIX if self.prefix else Layout.BUCKET

    @property
    def key_prefix(self) -> str:
        """The object-key prefix of everything in the volume ("" for a whole bucket)."""
        return f"{self.prefix}/" if self.prefix else ""


@dataclass(frozen=True)
class MountOptions:
    """How a volume is mounted; carried from CreateVolume to the node as volume context."""

    mounter: Mounter = Mounter.S3FS
    cache: CacheMode = CacheMode.NONE
    uid: int | None = None
    gid: int | None = None
    umask: int | None = None  # applied to files and directories, e.g. 0o022
    read_only: bool = False

    def to_context(self) -> dict[str, str]:
        """The volume-context form, which `parse_mount_options` reads back."""
        out = {"mounter": self.mounter.value, "cache": self.cache.value}
        if self.uid is not None:
            out["uid"] = str(self.uid)
        if self.gid is not None:
            out["gid"] = str(self.gid)
        if self.umask is not None:
            out["umask"] = f"{self.umask:04o}"
        if self.read_only:
            out["readOnly"] = "true"
        return out


@dataclass(frozen=True)
class Credentials:
    """Endpoint and keys, from the secrets the CO passes (csi.storage.k8s.io/*-secret-name)."""

    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str = "us-east-1"

    def __repr__(self) -> str:  # never log the secret key
        return f"Credentials(endpoint={self.endpoint!r}, access_key_id={self.access_key_id!r})"


@dataclass(frozen=True)
class VolumePlan:
    """What CreateVolume makes: the volume, and the context handed to every node."""

    ref: VolumeRef
    options: MountOptions

    @property
    def context(self) -> dict[str, str]:
        return {**self.options.to_context(), "layout": self.ref.layout.value}


_MOUNT_KEYS = frozenset({"mounter", "cache", "uid", "gid", "umask", "readOnly"})
_CREATE_KEYS = _MOUNT_KEYS | {"layout", "bucket"}


def _parse_bool(key: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"true", "yes", "1"}:
        return True
    if lowered in {"false", "no", "0", ""}:
        return False
    raise invalid_argument(f"parameter {key}={value!r} is not a boolean (true/false)")


def _parse_id(key: str, value: str) -> int:
    if not value.isdigit() or int(value) > 2**32 - 2:
        raise invalid_argument(f"parameter {key}={value!r} is not a numeric uid/gid")
    return int(value)


E = TypeVar("E", bound=StrEnum)


def _parse_enum(key: str, value: str, enum: type[E]) -> E:
    try:
        return enum(value.strip().lower())
    except ValueError:
        allowed = ", ".join(e.value for e in enum)
        raise invalid_argument(f"parameter {key}={value!r} is not one of: {allowed}") from None


def parse_mount_options(values: Mapping[str, str], *, strict: bool = True) -> MountOptions:
    """Mount options from StorageClass parameters or volume context.

    `strict` rejects unknown keys (StorageClass parameters); volume context carries keys
    the CO adds (csi.storage.k8s.io/pod.name, ...), so the node reads it non-strictly.
    """
    if strict:
        unknown = sorted(k for k in values if k not in _MOUNT_KEYS)
        if unknown:
            raise invalid_argument(f"unknown mount parameters: {', '.join(unknown)}")
    umask: int | None = None
    if "umask" in values:
        raw = values["umask"]
        if not re.fullmatch(r"0?[0-7]{3}", raw):
            raise invalid_argument(f"parameter umask={raw!r} is not an octal umask like 022")
        umask = int(raw, 8)
    return MountOptions(
        mounter=_parse_enum("mounter", values.get("mounter", "s3fs"), Mounter),
        cache=_parse_enum("cache", values.get("cache", "none"), CacheMode),
        uid=_parse_id("uid", values["uid"]) if "uid" in values else None,
        gid=_parse_id("gid", values["gid"]) if "gid" in values else None,
        umask=umask,
        read_only=_parse_bool("readOnly", values.get("readOnly", "false")),
    )


def check_bucket_name(name: str) -> str:
    """S3 bucket naming rules (3-63 chars, lowercase, digits, '-', '.'; not an IP address)."""
    if not _BUCKET_RE.match(name) or ".." in name or _IPV4_RE.match(name):
        raise invalid_argument(f"{name!r} is not a valid S3 bucket name")
    return name


def name_to_bucket(volume_name: str) -> str:
    """A valid, stable bucket name for a CO volume name (e.g. pvc-<uid>); long names get a hash."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", volume_name.lower()).strip("-")
    if len(cleaned) < 3 or len(cleaned) > 63 or cleaned != volume_name:
        digest = hashlib.sha256(volume_name.encode()).hexdigest()[:12]
        cleaned = f"{cleaned[:50].strip('-') or 'vol'}-{digest}"
    return check_bucket_name(cleaned)


def name_to_prefix(volume_name: str) -> str:
    """A single path component for a CO volume name inside a shared bucket."""
    if _PREFIX_RE.match(volume_name) and volume_name not in {".", ".."}:
        return volume_name
    digest = hashlib.sha256(volume_name.encode()).hexdigest()[:12]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", volume_name).strip("-.")[:200]
    return f"{cleaned or 'vol'}-{digest}"


def plan_volume(name: str, parameters: Mapping[str, str]) -> VolumePlan:
    """CreateVolume's name and StorageClass parameters -> the volume to make."""
    if not name:
        raise invalid_argument("CreateVolume: name is required")
    ours = {k: v for k, v in parameters.items() if not k.startswith(RESERVED_PREFIX)}
    unknown = sorted(k for k in ours if k not in _CREATE_KEYS)
    if unknown:
        raise invalid_argument(f"unknown StorageClass parameters: {', '.join(unknown)}")
    default_layout = Layout.PREFIX if "bucket" in ours else Layout.BUCKET
    layout = _parse_enum("layout", ours.get("layout", default_layout.value), Layout)
    options = parse_mount_options({k: v for k, v in ours.items() if k in _MOUNT_KEYS})
    if layout is Layout.BUCKET:
        if "bucket" in ours:
            raise invalid_argument("parameter bucket is only meaningful with layout=prefix")
        return VolumePlan(VolumeRef(bucket=name_to_bucket(name)), options)
    if "bucket" not in ours:
        raise invalid_argument("layout=prefix needs the parameter bucket (the shared bucket)")
    bucket = check_bucket_name(ours["bucket"])
    return VolumePlan(VolumeRef(bucket=bucket, prefix=name_to_prefix(name)), options)


def parse_volume_id(volume_id: str) -> VolumeRef:
    """The inverse of `VolumeRef.volume_id`; NOT_FOUND for ids this driver never made."""
    if not volume_id:
        raise invalid_argument("volume_id is required")
    bucket, _, prefix = volume_id.partition("/")
    try:
        check_bucket_name(bucket)
    except CsiCallError:
        raise not_found(f"volume {volume_id!r} does not exist: not an S3 volume id") from None
    if prefix and (not _PREFIX_RE.match(prefix) or prefix in {".", ".."}):
        raise not_found(f"volume {volume_id!r} does not exist: bad prefix {prefix!r}")
    return VolumeRef(bucket=bucket, prefix=prefix)


_INLINE_KEYS = _MOUNT_KEYS | {"bucket", "prefix"}


def parse_inline_volume(context: Mapping[str, str]) -> tuple[VolumeRef, MountOptions]:
    """An inline ephemeral volume's `volumeAttributes`: an existing `bucket` (and optionally a
    `prefix` inside it) to mount, plus the mount options a StorageClass could give."""
    ours = {k: v for k, v in context.items() if not k.startswith(RESERVED_PREFIX)}
    unknown = sorted(k for k in ours if k not in _INLINE_KEYS)
    if unknown:
        raise invalid_argument(
            f"unknown volumeAttributes of an inline volume: {', '.join(unknown)}"
        )
    if not ours.get("bucket"):
        raise invalid_argument(
            "an inline volume needs volumeAttributes.bucket (an existing bucket; prefix optional)"
        )
    bucket = check_bucket_name(ours["bucket"])
    prefix = ours.get("prefix", "").strip("/")
    for part in prefix.split("/") if prefix else ():
        if not _PREFIX_RE.match(part) or part in {".", ".."}:
            raise invalid_argument(f"volumeAttributes.prefix {prefix!r} is not a valid key prefix")
    options = parse_mount_options({k: v for k, v in ours.items() if k in _MOUNT_KEYS})
    return VolumeRef(bucket=bucket, prefix=prefix), options


CREDENTIAL_KEYS = "endpoint, accessKeyID, secretAccessKey"


def parse_credentials(
    secrets: Mapping[str, str],
    *,
    call: str,
    where: str = "the StorageClass must reference a Secret",
) -> Credentials:
    """Secrets -> credentials; keys: endpoint, accessKeyID, secretAccessKey, region (optional)."""
    missing = [k for k in ("endpoint", "accessKeyID", "secretAccessKey") if not secrets.get(k)]
    if missing:
        raise invalid_argument(
            f"{call}: secrets lack {', '.join(missing)} ({where} with {CREDENTIAL_KEYS})"
        )
    endpoint = secrets["endpoint"].strip()
    if not re.match(r"^https?://[^/\s]+/?$", endpoint):
        raise invalid_argument(f"{call}: secret endpoint {endpoint!r} is not http(s)://host[:port]")
    return Credentials(
        endpoint=endpoint.rstrip("/"),
        access_key_id=secrets["accessKeyID"],
        secret_access_key=secrets["secretAccessKey"],
        region=secrets.get("region") or "us-east-1",
    )

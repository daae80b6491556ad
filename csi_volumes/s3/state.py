"""The node's on-disk record of what it staged and published, so a restarted driver finds
its mounts again (and can remount a dead one without the CO's secrets).

    <state-dir>/volumes/<sha256(volume_id)[:24]>/
        record.json      StagedVolume, written atomically (temp, fsync, rename)
        passwd-s3fs | rclone.conf   credentials for the mounter, mode 0600
        mounter.log      the FUSE daemon's log
        cache/           its disk cache, when the volume asks for one

Credentials live in the record too (the directory is 0700): remounting a dead mount
happens without a CO call, so nothing else could supply them.
"""

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from csi_volumes.s3.params import (
    CacheMode,
    Credentials,
    Mounter,
    MountOptions,
    VolumeRef,
)


@dataclass(frozen=True)
class StagedVolume:
    volume_id: str
    staging_path: str
    options: MountOptions
    creds: Credentials
    read_only: bool  # staged read-only (a *_READER_ONLY access mode)
    targets: dict[str, bool] = field(default_factory=dict)  # target path -> read-only
    #: an inline ephemeral volume: `volume_id` is the kubelet's handle, `source` the
    #: "bucket[/prefix]" from its attributes, and the FUSE mount sits in the work dir
    ephemeral: bool = False
    source: str = ""
    #: the pod's fsGroup the mount was made for (CSI volume_mount_group), or None
    mount_group: int | None = None
    #: target path -> (namespace, name, uid) of its pod, when the CO sent pod info
    pods: dict[str, tuple[str, str, str]] = field(default_factory=dict)

    @property
    def ref(self) -> VolumeRef:
        bucket, _, prefix = (self.source or self.volume_id).partition("/")
        return VolumeRef(bucket=bucket, prefix=prefix)

    def with_target(
        self, path: str, read_only: bool, pod: tuple[str, str, str] | None = None
    ) -> "StagedVolume":
        pods = {**self.pods, path: pod} if pod is not None else self.pods
        return replace(self, targets={**self.targets, path: read_only}, pods=pods)

    def without_target(self, path: str) -> "StagedVolume":
        return replace(
            self,
            targets={k: v for k, v in self.targets.items() if k != path},
            pods={k: v for k, v in self.pods.items() if k != path},
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = self.options.to_context()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "StagedVolume":
        o = data["options"]
        options = MountOptions(
            mounter=Mounter(o["mounter"]),
            cache=CacheMode(o["cache"]),
            uid=int(o["uid"]) if "uid" in o else None,
            gid=int(o["gid"]) if "gid" in o else None,
            umask=int(o["umask"], 8) if "umask" in o else None,
            read_only=o.get("readOnly") == "true",
        )
        return cls(
            volume_id=data["volume_id"],
            staging_path=data["staging_path"],
            options=options,
            creds=Credentials(**data["creds"]),
            read_only=bool(data["read_only"]),
            targets={str(k): bool(v) for k, v in data.get("targets", {}).items()},
            ephemeral=bool(data.get("ephemeral", False)),
            source=str(data.get("source", "")),
            mount_group=int(data["mount_group"]) if data.get("mount_group") is not None else None,
            pods={
                str(k): (str(v[0]), str(v[1]), str(v[2]))
                for k, v in (data.get("pods") or {}).items()
            },
        )


def _write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(path)


class StateStore:
    """Blocking file operations; tiny, so the node calls them inline."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "volumes").mkdir(parents=True, exist_ok=True, mode=0o700)
        root.chmod(0o700)

    def work_dir(self, volume_id: str) -> Path:
        digest = hashlib.sha256(volume_id.encode()).hexdigest()[:24]
        return self.root / "volumes" / digest

    def load(self, volume_id: str) -> StagedVolume | None:
        try:
            raw = (self.work_dir(volume_id) / "record.json").read_bytes()
        except FileNotFoundError:
            return None
        return StagedVolume.from_json(json.loads(raw))

    def all(self) -> list[StagedVolume]:
        out = []
        for record in sorted((self.root / "volumes").glob("*/record.json")):
            try:
                out.append(StagedVolume.from_json(json.loads(record.read_bytes())))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a record from an incompatible version is left for an operator
        return out

    def save(self, volume: StagedVolume) -> None:
        work = self.work_dir(volume.volume_id)
        work.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(work / "record.json", json.dumps(volume.to_json(), indent=1).encode())

    def write_private(self, path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_atomic(path, text.encode())

    def forget(self, volume_id: str) -> None:
        shutil.rmtree(self.work_dir(volume_id), ignore_errors=True)

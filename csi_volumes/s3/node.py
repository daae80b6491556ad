"""The CSI Node service of the S3 driver: stage = FUSE mount, publish = bind mount.

    NodeStageVolume    pre-flight S3 check (clear S3 errors) ─▶ record + credentials on
                       disk ─▶ mounter (s3fs / rclone) detached at the staging path
    NodePublishVolume  bind mount staging ─▶ target (read-only when asked); an inline
                       ephemeral volume (no stage) gets its own FUSE mount in its work dir
    NodeUnpublish/NodeUnstage  unmount, forget; both idempotent
    NodeGetVolumeStats statvfs + health; a dead mount is remounted and reported

A pod's fsGroup comes as `volume_mount_group` (VOLUME_MOUNT_GROUP) and is the group the
mount is made for (`mounters.py`); a volume is mounted once per node, so pods sharing it
there must share the group.

A volume record on disk (`state.py`) lists its staging path, targets and their pods, so a
restarted driver re-adopts its mounts (`recover`), and a FUSE daemon that died is replaced
(`check_all`, run periodically and on every stage/publish/stats): unmount the dead
staging mount and its bind mounts, mount again, bind the targets again. Every such
event is logged as one `csi-event reason=... volume=... message="..."` line, appended
to `<state-dir>/events.jsonl`, and posted as a Kubernetes Event on each pod using the
volume (`kube_events.py`, when the driver has API credentials). (CSI's VolumeCondition,
the spec's old channel for this, was an alpha API and is removed in CSI v1.12.1+/v1.13,
which Kubernetes 1.37 vendors, so nothing would read it.)
"""

import asyncio
import json
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TypeVar

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.errors import (
    Code,
    CsiCallError,
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from csi_volumes.kube_events import EventSink, PodRef
from csi_volumes.mountinfo import Health, mount_at, probe_health
from csi_volumes.s3 import mountops
from csi_volumes.s3.capabilities import check_capabilities, is_read_only
from csi_volumes.s3.mounters import mount_command
from csi_volumes.s3.params import (
    CacheMode,
    Mounter,
    parse_credentials,
    parse_inline_volume,
    parse_mount_options,
    parse_volume_id,
)
from csi_volumes.s3.state import StagedVolume, StateStore
from csi_volumes.s3.store import S3Store

log = logging.getLogger("csi_volumes.s3.node")

T = TypeVar("T")


def _clean(path: str) -> str:
    """Pure string normalisation (no file system access)."""
    return os.path.normpath(path)


def _group_hint(have: int | None, want: int | None) -> str:
    if have == want:
        return ""
    return (
        f" (mounted for fsGroup {have if have is not None else 'none'}, asked for"
        f" {want if want is not None else 'none'}: pods sharing an S3 volume on one node"
        " need the same fsGroup)"
    )


def _waits_for_exit(volume: StagedVolume | None) -> bool:
    """Whether unmounting waits for the FUSE daemon to end: not for s3fs without a disk
    cache (see unmount_fuse); one with a cache may still clean it up on its way out, and
    the next mount of the volume would share that directory."""
    return (
        volume is None
        or volume.options.mounter is not Mounter.S3FS
        or volume.options.cache is not CacheMode.NONE
    )


def _int64(value: int) -> int:
    return max(0, min(value, 2**63 - 1))


def _mkdir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def _rmdir(path: Path) -> None:
    try:
        path.rmdir()
    except FileNotFoundError:
        pass


PROBE_TIMEOUT_S = 10.0

EPHEMERAL_KEY = "csi.storage.k8s.io/ephemeral"


def pod_of(context: dict[str, str]) -> PodRef | None:
    """The pod a publish is for, from the pod info the CO adds (podInfoOnMount)."""
    ns = context.get("csi.storage.k8s.io/pod.namespace", "")
    name = context.get("csi.storage.k8s.io/pod.name", "")
    uid = context.get("csi.storage.k8s.io/pod.uid", "")
    return (ns, name, uid) if ns and name else None


def mount_group_of(cap: csi_pb2.VolumeCapability, *, call: str) -> int | None:
    """CSI `volume_mount_group` (the pod's fsGroup, sent because we have VOLUME_MOUNT_GROUP)."""
    raw = cap.mount.volume_mount_group if cap.HasField("mount") else ""
    if not raw:
        return None
    if not raw.isdigit() or int(raw) > 2**32 - 2:
        raise invalid_argument(f"{call}: volume_mount_group {raw!r} is not a numeric group id")
    return int(raw)


EVENTS_FILE = "events.jsonl"


def csi_event(
    reason: str,
    volume_id: str,
    message: str,
    *,
    warning: bool = True,
    events_file: Path | None = None,
) -> None:
    """One parseable log line per volume event, also appended as JSON to `events_file`."""
    if events_file is not None:
        record = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "volume_id": volume_id,
            "message": message,
        }
        try:
            with events_file.open("a") as out:
                out.write(json.dumps(record) + "\n")
        except OSError as err:
            log.warning("could not append to %s: %s", events_file, err)
    quoted = message.replace("\\", "\\\\").replace('"', '\\"')
    log.log(
        logging.WARNING if warning else logging.INFO,
        'csi-event reason=%s volume=%s message="%s"',
        reason,
        volume_id,
        quoted,
    )


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    state_dir: Path
    max_volumes_per_node: int = 0


class S3Node:
    def __init__(self, config: NodeConfig, events: EventSink | None = None) -> None:
        self.config = config
        self.state = StateStore(config.state_dir)
        self.events = events
        self._locks: dict[str, asyncio.Lock] = {}
        self._busy: set[str] = set()  # volumes an RPC is at work on

    def _event(
        self, reason: str, volume: StagedVolume, message: str, *, warning: bool = True
    ) -> None:
        """Log + events.jsonl, and a Kubernetes Event on every pod using the volume."""
        csi_event(
            reason,
            volume.volume_id,
            message,
            warning=warning,
            events_file=self.config.state_dir / EVENTS_FILE,
        )
        if self.events is not None:
            self.events.emit(
                volume.pods.values(),
                warning=warning,
                reason=reason,
                message=f"S3 volume {volume.source or volume.volume_id}: {message}",
            )

    # -- locking: one operation per volume at a time (spec: ABORTED when one is pending) --

    async def _exclusive(self, volume_id: str, fn: Callable[[], Awaitable[T]]) -> T:
        """Run one RPC on a volume: ABORTED if another RPC is at work on it (the spec's
        answer); a background health check in progress is waited for instead."""
        if volume_id in self._busy:
            raise CsiCallError(Code.ABORTED, f"an operation is pending for volume {volume_id}")
        self._busy.add(volume_id)
        try:
            async with self._locks.setdefault(volume_id, asyncio.Lock()):
                return await fn()
        finally:
            self._busy.discard(volume_id)

    # -- mounting --

    async def _mount(self, volume: StagedVolume) -> None:
        work = self.state.work_dir(volume.volume_id)
        cmd = mount_command(
            ref=volume.ref,
            creds=volume.creds,
            options=volume.options,
            mount_group=volume.mount_group,
            mountpoint=Path(volume.staging_path),
            work_dir=work,
            read_only=volume.read_only,
        )
        for path, text in cmd.files.items():
            self.state.write_private(path, text)
        await asyncio.to_thread(
            mountops.run_mounter, cmd, Path(volume.staging_path), work / "launcher.log"
        )

    async def _health(self, path: Path) -> tuple[Health, str]:
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(probe_health, path), timeout=PROBE_TIMEOUT_S
            )
        except TimeoutError:
            return Health.ERROR, f"{path}: no answer from the FUSE daemon in {PROBE_TIMEOUT_S} s"

    async def _remount(self, volume: StagedVolume, why: str) -> None:
        """Replace a dead FUSE mount and re-bind every target onto the new one."""
        self._event("VolumeMountDead", volume, why)
        staging = Path(volume.staging_path)
        for target in volume.targets:
            await asyncio.to_thread(mountops.unmount_all, Path(target), lazy=True)
        await asyncio.to_thread(mountops.unmount_all, staging, lazy=True)
        await self._mount(volume)
        for target, ro in volume.targets.items():
            await asyncio.to_thread(_mkdir, Path(target))
            await asyncio.to_thread(
                mountops.bind_mount, staging, Path(target), read_only=ro or volume.read_only
            )
        self._event(
            "VolumeRemounted",
            volume,
            f"remounted {staging} and {len(volume.targets)} target(s) after: {why}",
            warning=False,
        )

    async def _ensure_healthy(self, volume: StagedVolume) -> None:
        staging = Path(volume.staging_path)
        health, why = await self._health(staging)
        if health in (Health.DEAD, Health.MISSING):
            if health is Health.MISSING and not await asyncio.to_thread(staging.exists):
                raise failed_precondition(f"staging path {staging} of {volume.volume_id} is gone")
            await self._remount(volume, why)
            return
        # a target whose bind mount vanished (or died with an old daemon) is bound again
        for target, ro in volume.targets.items():
            t_health, t_why = await self._health(Path(target))
            if t_health in (Health.DEAD, Health.MISSING) and await asyncio.to_thread(
                Path(target).exists
            ):
                await asyncio.to_thread(mountops.unmount_all, Path(target), lazy=True)
                await asyncio.to_thread(
                    mountops.bind_mount, staging, Path(target), read_only=ro or volume.read_only
                )
                self._event("VolumeRebound", volume, f"re-bound {target}: {t_why}")

    async def recover(self) -> None:
        """On start: re-adopt every recorded volume, remounting what died meanwhile."""
        for volume in self.state.all():
            try:
                await self._exclusive(volume.volume_id, partial(self._ensure_healthy, volume))
            except CsiCallError as err:
                self._event("VolumeRecoveryFailed", volume, err.message)
            else:
                log.info("re-adopted volume %s at %s", volume.volume_id, volume.staging_path)

    async def check_all(self) -> None:
        """The periodic check: every staged volume is healthy, or is remounted."""
        for volume in self.state.all():
            lock = self._locks.setdefault(volume.volume_id, asyncio.Lock())
            if lock.locked():
                continue  # an RPC is at work on it right now
            async with lock:
                current = self.state.load(volume.volume_id)
                if current is None:
                    continue
                try:
                    await self._ensure_healthy(current)
                except CsiCallError as err:
                    self._event("VolumeRemountFailed", current, err.message)

    async def run_checks(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.check_all()

    # -- CSI Node RPCs --

    async def stage(self, req: csi_pb2.NodeStageVolumeRequest) -> csi_pb2.NodeStageVolumeResponse:
        if not req.volume_id:
            raise invalid_argument("NodeStageVolume: volume_id is required")
        if not req.staging_target_path:
            raise invalid_argument("NodeStageVolume: staging_target_path is required")
        if not req.HasField("volume_capability"):
            raise invalid_argument("NodeStageVolume: volume_capability is required")
        check_capabilities(
            [req.volume_capability], call="NodeStageVolume", code=Code.FAILED_PRECONDITION
        )
        ref = parse_volume_id(req.volume_id)
        options = parse_mount_options(dict(req.volume_context), strict=False)
        creds = parse_credentials(dict(req.secrets), call="NodeStageVolume")
        staging = _clean(req.staging_target_path)
        wanted = StagedVolume(
            volume_id=ref.volume_id,
            staging_path=staging,
            options=options,
            creds=creds,
            read_only=is_read_only(req.volume_capability),
            mount_group=mount_group_of(req.volume_capability, call="NodeStageVolume"),
        )

        async def do() -> csi_pb2.NodeStageVolumeResponse:
            existing = self.state.load(ref.volume_id)
            if existing is not None:
                if existing.staging_path != staging and mount_at(Path(existing.staging_path)):
                    raise already_exists(
                        f"volume {ref.volume_id} is already staged at {existing.staging_path}"
                    )
                if (existing.options, existing.read_only, existing.mount_group) != (
                    options,
                    wanted.read_only,
                    wanted.mount_group,
                ):
                    if mount_at(Path(staging)) is not None:
                        raise already_exists(
                            f"volume {ref.volume_id} is staged at {staging} with other options"
                            + _group_hint(existing.mount_group, wanted.mount_group)
                        )
                elif existing.staging_path == staging and mount_at(Path(staging)) is not None:
                    await self._ensure_healthy(existing)
                    return csi_pb2.NodeStageVolumeResponse()
            occupant = mount_at(Path(staging))
            if occupant is not None and existing is None:
                raise already_exists(
                    f"staging path {staging} already has a mount ({occupant.fstype})"
                )
            await asyncio.to_thread(_mkdir, Path(staging))
            await asyncio.to_thread(S3Store(creds).check_access, ref)
            targets = existing.targets if existing is not None else {}
            pods = existing.pods if existing is not None else {}
            volume = StagedVolume(**{**wanted.__dict__, "targets": targets, "pods": pods})
            self.state.save(volume)
            try:
                await self._mount(volume)
            except CsiCallError:
                if existing is None:
                    self.state.forget(ref.volume_id)
                raise
            log.info("staged %s at %s with %s", ref.volume_id, staging, options.mounter.value)
            return csi_pb2.NodeStageVolumeResponse()

        return await self._exclusive(ref.volume_id, do)

    async def unstage(
        self, req: csi_pb2.NodeUnstageVolumeRequest
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        if not req.volume_id:
            raise invalid_argument("NodeUnstageVolume: volume_id is required")
        if not req.staging_target_path:
            raise invalid_argument("NodeUnstageVolume: staging_target_path is required")
        staging = Path(_clean(req.staging_target_path))

        async def do() -> csi_pb2.NodeUnstageVolumeResponse:
            existing = self.state.load(req.volume_id)
            if existing is not None and existing.staging_path != str(staging):
                raise not_found(
                    f"volume {req.volume_id} is staged at {existing.staging_path}, not {staging}"
                )
            await self._unmount_and_forget(req.volume_id, staging, existing)
            log.info("unstaged %s from %s", req.volume_id, staging)
            return csi_pb2.NodeUnstageVolumeResponse()

        return await self._exclusive(req.volume_id, do)

    async def _unmount_and_forget(
        self, volume_id: str, mountpoint: Path, volume: StagedVolume | None
    ) -> None:
        """Unmount a volume's FUSE mount (its data in S3 first) and drop its record."""
        await asyncio.to_thread(
            mountops.unmount_fuse,
            mountpoint,
            rc_socket=self.state.work_dir(volume_id) / "rc.sock",
            wait_for_exit=_waits_for_exit(volume),
        )
        self.state.forget(volume_id)

    async def publish(
        self, req: csi_pb2.NodePublishVolumeRequest
    ) -> csi_pb2.NodePublishVolumeResponse:
        if not req.volume_id:
            raise invalid_argument("NodePublishVolume: volume_id is required")
        if not req.target_path:
            raise invalid_argument("NodePublishVolume: target_path is required")
        if not req.HasField("volume_capability"):
            raise invalid_argument("NodePublishVolume: volume_capability is required")
        ephemeral = req.volume_context.get(EPHEMERAL_KEY) == "true"
        if not req.staging_target_path and not ephemeral:
            raise failed_precondition(
                "NodePublishVolume: staging_target_path is required (STAGE_UNSTAGE_VOLUME)"
            )
        check_capabilities(
            [req.volume_capability], call="NodePublishVolume", code=Code.FAILED_PRECONDITION
        )
        target = _clean(req.target_path)
        read_only = req.readonly or is_read_only(req.volume_capability)
        group = mount_group_of(req.volume_capability, call="NodePublishVolume")
        pod = pod_of(dict(req.volume_context))
        if ephemeral:
            return await self._exclusive(
                req.volume_id,
                partial(self._publish_inline, req, target, read_only, group, pod),
            )

        async def do() -> csi_pb2.NodePublishVolumeResponse:
            volume = self.state.load(req.volume_id)
            staging = _clean(req.staging_target_path)
            if volume is None or volume.staging_path != staging:
                raise failed_precondition(
                    f"volume {req.volume_id} is not staged at {staging}: call NodeStageVolume first"
                )
            if group is not None and volume.mount_group != group:
                raise failed_precondition(
                    f"volume {req.volume_id} cannot be published for this pod"
                    + _group_hint(volume.mount_group, group)
                )
            await self._ensure_healthy(volume)
            volume = self.state.load(req.volume_id) or volume
            return await self._bind_target(volume, target, read_only, pod)

        return await self._exclusive(req.volume_id, do)

    async def _bind_target(
        self, volume: StagedVolume, target: str, read_only: bool, pod: PodRef | None
    ) -> csi_pb2.NodePublishVolumeResponse:
        """Bind the (healthy) FUSE mount onto one pod's target; idempotent."""
        present = mount_at(Path(target))
        if present is not None:
            if target in volume.targets and volume.targets[target] == read_only:
                return csi_pb2.NodePublishVolumeResponse()
            raise already_exists(
                f"target {target} already has a mount incompatible with this publish "
                f"of {volume.volume_id} (read-only={read_only})"
            )
        await asyncio.to_thread(_mkdir, Path(target))
        await asyncio.to_thread(
            mountops.bind_mount,
            Path(volume.staging_path),
            Path(target),
            read_only=read_only or volume.read_only,
        )
        self.state.save(volume.with_target(target, read_only, pod))
        log.info("published %s at %s (read-only=%s)", volume.volume_id, target, read_only)
        return csi_pb2.NodePublishVolumeResponse()

    async def _publish_inline(
        self,
        req: csi_pb2.NodePublishVolumeRequest,
        target: str,
        read_only: bool,
        group: int | None,
        pod: PodRef | None,
    ) -> csi_pb2.NodePublishVolumeResponse:
        """An inline ephemeral volume (no stage): an existing bucket[/prefix] named by the pod's
        volumeAttributes, credentials from its nodePublishSecretRef; the FUSE mount lives in
        the volume's work dir, bound onto the target, and goes with the unpublish. The
        bucket's data stays: the mount is what is ephemeral."""
        existing = self.state.load(req.volume_id)
        if existing is not None and target in existing.targets:
            await self._ensure_healthy(existing)
            return await self._bind_target(
                self.state.load(req.volume_id) or existing, target, read_only, pod
            )
        if existing is not None:  # a record without this target: left by a crash; start over
            await asyncio.to_thread(mountops.unmount_all, Path(existing.staging_path), lazy=True)
            self.state.forget(req.volume_id)
        ref, options = parse_inline_volume(dict(req.volume_context))
        creds = parse_credentials(
            dict(req.secrets),
            call="NodePublishVolume",
            where="an inline volume needs a nodePublishSecretRef to a Secret",
        )
        mnt = self.state.work_dir(req.volume_id) / "mnt"
        volume = StagedVolume(
            volume_id=req.volume_id,
            staging_path=str(mnt),
            options=options,
            creds=creds,
            read_only=read_only,
            ephemeral=True,
            source=ref.volume_id,
            mount_group=group,
        )
        await asyncio.to_thread(S3Store(creds).check_access, ref)
        self.state.save(volume)
        await asyncio.to_thread(_mkdir, mnt)
        try:
            await self._mount(volume)
            response = await self._bind_target(volume, target, read_only, pod)
        except CsiCallError:
            await asyncio.to_thread(mountops.unmount_all, mnt, lazy=True)
            self.state.forget(req.volume_id)
            raise
        log.info("inline volume %s: %s mounted for %s", req.volume_id, ref.volume_id, target)
        return response

    async def unpublish(
        self, req: csi_pb2.NodeUnpublishVolumeRequest
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        if not req.volume_id:
            raise invalid_argument("NodeUnpublishVolume: volume_id is required")
        if not req.target_path:
            raise invalid_argument("NodeUnpublishVolume: target_path is required")
        target = Path(_clean(req.target_path))

        async def do() -> csi_pb2.NodeUnpublishVolumeResponse:
            await asyncio.to_thread(mountops.unmount_all, target)
            try:
                await asyncio.to_thread(_rmdir, target)
            except OSError as err:
                raise CsiCallError(
                    Code.INTERNAL, f"could not remove target {target} after unmount: {err}"
                ) from err
            volume = self.state.load(req.volume_id)
            if volume is not None and volume.ephemeral:
                # an inline volume's FUSE mount is its publish's: it goes now
                rest = volume.without_target(str(target))
                if not rest.targets:
                    mnt = Path(volume.staging_path)
                    await self._unmount_and_forget(req.volume_id, mnt, volume)
                else:
                    self.state.save(rest)
            elif volume is not None and str(target) in volume.targets:
                self.state.save(volume.without_target(str(target)))
            log.info("unpublished %s from %s", req.volume_id, target)
            return csi_pb2.NodeUnpublishVolumeResponse()

        return await self._exclusive(req.volume_id, do)

    async def volume_stats(
        self, req: csi_pb2.NodeGetVolumeStatsRequest
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        if not req.volume_id:
            raise invalid_argument("NodeGetVolumeStats: volume_id is required")
        if not req.volume_path:
            raise invalid_argument("NodeGetVolumeStats: volume_path is required")
        path = _clean(req.volume_path)
        volume = self.state.load(req.volume_id)
        if volume is None or (path != volume.staging_path and path not in volume.targets):
            raise not_found(f"volume {req.volume_id} is not staged or published at {path}")

        async def do() -> csi_pb2.NodeGetVolumeStatsResponse:
            health, why = await self._health(Path(path))
            if health in (Health.DEAD, Health.MISSING):
                await self._remount(volume, why)
            try:
                st = await asyncio.wait_for(asyncio.to_thread(os.statvfs, path), PROBE_TIMEOUT_S)
            except (OSError, TimeoutError) as err:
                raise CsiCallError(
                    Code.INTERNAL, f"NodeGetVolumeStats: statvfs of {path} failed: {err}"
                ) from err
            return csi_pb2.NodeGetVolumeStatsResponse(
                usage=[
                    csi_pb2.VolumeUsage(
                        unit=csi_pb2.VolumeUsage.BYTES,
                        # FUSE S3 mounters report huge made-up sizes; CSI fields are int64
                        total=_int64(st.f_blocks * st.f_frsize),
                        available=_int64(st.f_bavail * st.f_frsize),
                        used=_int64((st.f_blocks - st.f_bfree) * st.f_frsize),
                    ),
                    csi_pb2.VolumeUsage(
                        unit=csi_pb2.VolumeUsage.INODES,
                        total=_int64(st.f_files),
                        available=_int64(st.f_favail),
                        used=_int64(st.f_files - st.f_ffree),
                    ),
                ]
            )

        return await self._exclusive(req.volume_id, do)

    def info(self) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(
            node_id=self.config.node_id, max_volumes_per_node=self.config.max_volumes_per_node
        )

    def capabilities(self) -> csi_pb2.NodeGetCapabilitiesResponse:
        rpc = csi_pb2.NodeServiceCapability.RPC
        return csi_pb2.NodeGetCapabilitiesResponse(
            capabilities=[
                csi_pb2.NodeServiceCapability(rpc=rpc(type=t))
                for t in (
                    rpc.STAGE_UNSTAGE_VOLUME,
                    rpc.GET_VOLUME_STATS,
                    rpc.VOLUME_MOUNT_GROUP,
                )
            ]
        )

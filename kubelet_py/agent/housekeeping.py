"""Housekeeping the kubelet does on a timer: container log rotation and image GC.

Log rotation (containerLogMaxSize / containerLogMaxFiles, upstream's container log manager):
every LOG_CHECK_S the current CRI log of each running container is stat()ed (paths come
from the workers' view, no runtime call); one over the size limit is renamed to
`<n>.log.<UTC timestamp>`, the runtime is asked to reopen it (ReopenContainerLog), and
rotated files beyond MaxFiles - 1 are deleted, oldest first. (Upstream also gzips older
rotated files; these stay plain.)

Image GC (imageGCHighThresholdPercent / LowThresholdPercent / imageMinimumGCAge, upstream's
image manager): every IMAGE_GC_S, when the image filesystem is fuller than the high
threshold, images no container uses are removed through CRI, least recently used first,
until the estimate of usage is under the low threshold. "Used" is tracked here: an image is
used while any container (in any state) references it.

    workers' view ──▶ rotate_logs() ──rename + ReopenContainerLog──▶ runtime
    CRI ListImages/ListContainers ──▶ plan_image_gc() (pure) ──RemoveImage──▶ runtime
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kubelet_py.agent.cri_client import CRIError, CRIRuntime
from kubelet_py.agent.kubeletconfig import KubeletConfiguration
from kubelet_py.agent.quantity import bytes_of

log = logging.getLogger("kubelet_py.housekeeping")

LOG_CHECK_S = 10.0
IMAGE_GC_S = 300.0


@dataclass(frozen=True)
class ImageInfo:
    id: str
    size_bytes: int
    last_used: float
    """When a container last referenced it (or when it was first seen, if never)."""


def plan_image_gc(
    images: Iterable[ImageInfo],
    *,
    in_use: set[str],
    used_bytes: int,
    capacity_bytes: int,
    high_pct: int,
    low_pct: int,
    min_age_s: float,
    now: float,
) -> list[str]:
    """IDs to remove, least recently used first, to get from above `high_pct` to below
    `low_pct` of the filesystem; images in use or used within `min_age_s` are kept."""
    if capacity_bytes <= 0 or 100.0 * used_bytes / capacity_bytes <= high_pct:
        return []
    to_free = used_bytes - capacity_bytes * low_pct / 100.0
    out = []
    for img in sorted(images, key=lambda i: i.last_used):
        if to_free <= 0:
            break
        if img.id in in_use or now - img.last_used < min_age_s:
            continue
        out.append(img.id)
        to_free -= img.size_bytes
    return out


def rotated_to_delete(current: Path, max_files: int) -> list[Path]:
    """Rotated siblings of `current` (`<name>.<stamp>`) beyond max_files - 1, oldest first."""
    rotated = sorted(current.parent.glob(f"{current.name}.*"))
    keep = max(0, max_files - 1)
    return rotated[: len(rotated) - keep] if len(rotated) > keep else []


class Housekeeper:
    def __init__(
        self,
        *,
        cri: CRIRuntime,
        config: KubeletConfiguration,
        running_logs: Callable[[], list[tuple[str, Path]]],
        imagefs: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cri = cri
        self.config = config
        self.running_logs = running_logs
        self.imagefs = imagefs
        self.clock = clock
        self.max_log_bytes = bytes_of(config.container_log_max_size)
        self.last_used: dict[str, float] = {}

    async def run(self) -> None:
        last_gc = self.clock()
        while True:
            await asyncio.sleep(LOG_CHECK_S)
            try:
                await self.rotate_logs()
                if self.clock() - last_gc >= IMAGE_GC_S:
                    last_gc = self.clock()
                    await self.collect_images()
            except (CRIError, OSError) as err:
                log.warning("housekeeping failed: %s", err)

    async def rotate_logs(self) -> None:
        for container_id, path in self.running_logs():
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                continue
            if size <= self.max_log_bytes:
                continue
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(self.clock()))
            rotated = path.with_name(f"{path.name}.{stamp}")
            if rotated.exists():
                continue  # rotated this second already
            path.rename(rotated)
            try:
                await self.cri.reopen_container_log(container_id)
            except CRIError as err:
                rotated.rename(path)  # the runtime keeps writing to the old file
                log.warning("reopening the log of container %s failed: %s", container_id, err)
                continue
            for old in rotated_to_delete(path, self.config.container_log_max_files):
                old.unlink(missing_ok=True)
            log.info("rotated the log of container %s (%d bytes)", container_id[:12], size)

    async def collect_images(self) -> list[str]:
        now = self.clock()
        containers = await self.cri.list_containers()
        in_use = {c.image_ref for c in containers} | {c.image.image for c in containers}
        images = await self.cri.list_images()
        for img in images:
            if img.id in in_use or any(t in in_use for t in img.repo_tags):
                self.last_used[img.id] = now
                in_use.add(img.id)
            self.last_used.setdefault(img.id, now)
        st = os.statvfs(self.imagefs)
        capacity = st.f_blocks * st.f_frsize
        used = capacity - st.f_bavail * st.f_frsize
        victims = plan_image_gc(
            [ImageInfo(i.id, i.size, self.last_used[i.id]) for i in images],
            in_use=in_use,
            used_bytes=used,
            capacity_bytes=capacity,
            high_pct=self.config.image_gc_high_threshold_percent,
            low_pct=self.config.image_gc_low_threshold_percent,
            min_age_s=self.config.image_minimum_gc_age_s,
            now=now,
        )
        for image_id in victims:
            try:
                await self.cri.remove_image(image_id)
                log.info("image GC removed %s", image_id)
            except CRIError as err:
                log.warning("image GC could not remove %s: %s", image_id, err)
            self.last_used.pop(image_id, None)
        return victims

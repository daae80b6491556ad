"""The eviction manager: local-storage limits of pods (emptyDir sizeLimit).

Every `interval_s` (upstream's housekeeping monitoring interval, 10 s) the disk use of each
running pod's disk-backed emptyDir volumes with a sizeLimit is measured (like `du`, in a
thread); a pod over a limit is evicted: its worker ends it as Failed with reason Evicted
and upstream's message, with a 1 s grace period, and it stays in the API. Memory-backed
emptyDirs need no watching: their tmpfs size is the limit, enforced by the kernel.

    agent ──pods()──▶ EvictionManager ──measure (thread)──▶ evict(message) ──▶ PodWorker
"""

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from kubelet_py.agent.model import Pod
from kubelet_py.agent.quantity import bytes_of
from kubelet_py.agent.volumes import disk_usage_bytes

log = logging.getLogger("kubelet_py.eviction")

EMPTY_DIR_MESSAGE = 'Usage of EmptyDir volume "{name}" exceeds the limit "{limit}". '


@dataclass(frozen=True)
class Candidate:
    """A running pod as the eviction manager sees it."""

    pod: Pod
    limited_dirs: list[tuple[str, Path, str]]
    """(volume name, host path, sizeLimit as written)."""
    evict: Callable[[str], None]


def over_limit(dirs: Iterable[tuple[str, Path, str]], usage: Callable[[Path], int]) -> str | None:
    """The eviction message for the first emptyDir whose usage exceeds its sizeLimit."""
    for name, path, limit in dirs:
        wanted = bytes_of(limit)
        if wanted > 0 and usage(path) > wanted:
            return EMPTY_DIR_MESSAGE.format(name=name, limit=limit)
    return None


class EvictionManager:
    def __init__(
        self, candidates: Callable[[], list[Candidate]], *, interval_s: float = 10.0
    ) -> None:
        self.candidates = candidates
        self.interval_s = interval_s

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception:
                log.exception("eviction check failed")

    async def check_once(self) -> None:
        for cand in self.candidates():
            if not cand.limited_dirs:
                continue
            message = await asyncio.to_thread(over_limit, cand.limited_dirs, _usage)
            if message is not None:
                cand.evict(message)


def _usage(path: Path) -> int:
    return disk_usage_bytes(path) if path.exists() else 0

"""Where pods come from: the API (a watch of pods bound to this node) and a static directory.

Both sources deliver `Pod` objects to one callback pair (`upsert`, `remove`).
The API source lists, then watches from the list's resourceVersion, and relists
on 410 Gone. The static source rescans its directory; a malformed manifest is
reported with the file name and the error, and the others still run. Each static
pod gets a mirror pod in the API (when there is one), recreated if deleted.
"""

import asyncio
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from cri.dirwatch import DirWatch, DirWatchError
from kubelet_py.agent.apiclient import ApiClient, ApiError, WatchExpired
from kubelet_py.agent.model import Pod, pod_from_api

log = logging.getLogger("kubelet_py.sources")

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
HASH_ANNOTATION = "kubernetes.io/config.hash"
SOURCE_ANNOTATION = "kubernetes.io/config.source"

Upsert = Callable[[Pod], None]
Remove = Callable[[str], None]


class ApiPodSource:
    def __init__(self, api: ApiClient, *, node_name: str, upsert: Upsert, remove: Remove) -> None:
        self.api = api
        self.node_name = node_name
        self.upsert = upsert
        self.remove = remove
        self.synced = asyncio.Event()
        self.mirrors: dict[str, str] = {}
        """namespace/name -> config hash of every mirror pod of this node (from the watch)."""
        self.mirrors_changed: Callable[[], None] = lambda: None
        """Called when a mirror pod went away (the static source recreates it)."""

    def _note_mirror(self, kind: str, obj: dict[str, Any]) -> bool:
        meta = obj["metadata"]
        mirror = (meta.get("annotations") or {}).get(MIRROR_ANNOTATION)
        if mirror is None:
            return False
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        if kind == "DELETED":
            self.mirrors.pop(key, None)
            self.mirrors_changed()
        else:
            self.mirrors[key] = mirror
        return True

    async def run(self) -> None:
        selector = {"fieldSelector": f"spec.nodeName={self.node_name}"}
        known: set[str] = set()
        while True:
            try:
                listing = await self.api.get("/api/v1/pods", **selector)
                current = set()
                self.mirrors.clear()
                for obj in listing.get("items") or []:
                    if self._note_mirror("ADDED", obj):
                        continue
                    pod = pod_from_api(obj)
                    current.add(pod.uid)
                    self.upsert(pod)
                for uid in known - current:
                    self.remove(uid)
                known = current
                self.mirrors_changed()
                self.synced.set()
                rv = listing["metadata"]["resourceVersion"]
                while True:
                    async for kind, obj in self.api.watch(
                        "/api/v1/pods", resource_version=rv, params=selector
                    ):
                        if kind == "BOOKMARK":
                            rv = obj["metadata"]["resourceVersion"]
                            continue
                        rv = obj["metadata"].get("resourceVersion", rv)
                        if self._note_mirror(kind, obj):
                            continue
                        pod = pod_from_api(obj)
                        if kind == "DELETED":
                            known.discard(pod.uid)
                            self.remove(pod.uid)
                        else:
                            known.add(pod.uid)
                            self.upsert(pod)
            except WatchExpired:
                log.info("pod watch expired (410 Gone); relisting")
            except (TimeoutError, ApiError, OSError) as err:
                log.warning("pod watch failed: %s; retrying", err)
                await asyncio.sleep(1.0)
            except Exception as err:  # noqa: BLE001 - aiohttp payload errors and the like
                log.warning("pod watch broke: %s; retrying", err)
                await asyncio.sleep(1.0)


def static_pod(obj: dict[str, Any], *, node_name: str, source: str) -> Pod:
    """A static pod: named <name>-<node>, UID from the manifest's hash, as the kubelet does."""
    digest = hashlib.md5(  # noqa: S324 - an identifier, not a security boundary
        json.dumps(obj, sort_keys=True).encode() + node_name.encode()
    ).hexdigest()
    meta = obj.setdefault("metadata", {})
    meta["name"] = f"{meta.get('name', 'static')}-{node_name}"
    meta.setdefault("namespace", "default")
    meta["uid"] = digest
    ann = meta.setdefault("annotations", {})
    ann[HASH_ANNOTATION] = digest
    ann[SOURCE_ANNOTATION] = source
    spec = obj.setdefault("spec", {})
    spec["nodeName"] = node_name
    spec.setdefault("enableServiceLinks", False)
    return pod_from_api(obj, static=True)


class StaticPodSource:
    def __init__(
        self,
        directory: Path,
        *,
        node_name: str,
        upsert: Upsert,
        remove: Remove,
        api: ApiClient | None,
        report_error: Callable[[str, str], None],
        mirrors: dict[str, str] | None = None,
        mirror_created: Callable[[str], None] = lambda _uid: None,
        interval_s: float = 20.0,
    ) -> None:
        self.mirrors = mirrors if mirrors is not None else {}
        self.mirror_created = mirror_created
        self.directory = directory
        self.node_name = node_name
        self.upsert, self.remove = upsert, remove
        self.api = api
        self.report_error = report_error
        self.interval_s = interval_s
        self.pods: dict[str, Pod] = {}  # uid -> pod
        self._errors: dict[str, str] = {}
        self._parsed: dict[str, tuple[tuple[int, int, int], tuple[Pod, ...]]] = {}
        """path -> ((inode, size, mtime_ns), its pods): unchanged files are not re-parsed."""
        self._wake = asyncio.Event()

    def scan(self) -> dict[str, Pod]:
        found: dict[str, Pod] = {}
        if not self.directory.is_dir():
            self._parsed.clear()
            return found
        seen: set[str] = set()
        for path in sorted(self.directory.iterdir()):
            if path.name.startswith(".") or path.suffix not in (".yaml", ".yml", ".json"):
                continue
            key = str(path)
            try:
                st = path.stat()
                signature = (st.st_ino, st.st_size, st.st_mtime_ns)
                cached = self._parsed.get(key)
                if cached is not None and cached[0] == signature:
                    pods = cached[1]
                else:
                    pods = self._parse(path)
                    self._parsed[key] = (signature, pods)
                seen.add(key)
                for pod in pods:
                    found[pod.uid] = pod
                self._errors.pop(key, None)
            except (yaml.YAMLError, ValueError, KeyError, TypeError, OSError) as err:
                self._parsed.pop(key, None)
                message = f"{err}".replace("\n", " ")
                if self._errors.get(key) != message:
                    self._errors[key] = message
                    self.report_error(key, message)
        for gone in set(self._parsed) - seen:
            del self._parsed[gone]
        return found

    def _parse(self, path: Path) -> tuple[Pod, ...]:
        pods = []
        for doc in (d for d in yaml.safe_load_all(path.read_text()) if d):
            if not isinstance(doc, dict) or doc.get("kind") != "Pod":
                kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
                raise ValueError(f"expected a Pod, found kind {kind}")
            if not (doc.get("spec") or {}).get("containers"):
                raise ValueError("spec.containers is empty")
            pods.append(static_pod(doc, node_name=self.node_name, source="file"))
        return tuple(pods)

    def nudge(self) -> None:
        """Look at the directory (and the mirror pods) again now."""
        self._wake.set()

    async def _wait_for_change(self, watch: DirWatch | None) -> DirWatch | None:
        """Until the directory changes (inotify) or `nudge()`, at most `interval_s` (the
        kubelet's fileCheckFrequency: the backstop for missed events)."""
        if watch is None and self.directory.is_dir():
            try:
                watch = DirWatch(self.directory, self.nudge)
            except DirWatchError as err:
                log.warning("static pods: %s; rescanning every second", err)
        try:
            await asyncio.wait_for(self._wake.wait(), self.interval_s if watch else 1.0)
            await asyncio.sleep(0.05)  # let a writer finish the file before it is parsed
        except TimeoutError:
            pass
        self._wake.clear()
        if watch is not None and not self.directory.is_dir():
            watch.close()  # removed (or replaced): watch the new one next time
            return None
        return watch

    async def run(self) -> None:
        watch: DirWatch | None = None
        try:
            while True:
                found = await asyncio.to_thread(self.scan)
                for uid in set(self.pods) - set(found):
                    self.remove(uid)
                for uid, pod in found.items():
                    if uid not in self.pods:
                        self.upsert(pod)
                self.pods = found
                if self.api is not None:
                    for pod in found.values():
                        await self._ensure_mirror(pod)
                watch = await self._wait_for_change(watch)
        finally:
            if watch is not None:
                watch.close()

    async def _ensure_mirror(self, pod: Pod) -> None:
        """Create the mirror pod if the watch has not seen one with this manifest's hash.

        A node may not GET pods that are not bound to it, so presence comes from the
        API source's watch (`mirrors`), which includes mirror pods, as upstream's does.
        """
        assert self.api is not None
        path = f"/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
        seen = self.mirrors.get(pod.full_name)
        if seen == pod.annotations.get(HASH_ANNOTATION):
            return
        if seen is not None:
            try:
                await self.api.delete(path, {"gracePeriodSeconds": 0})
            except ApiError as err:
                if err.status != 404:
                    log.warning("replacing mirror pod %s failed: %s", pod.full_name, err)
                    return
        raw = json.loads(json.dumps(pod.raw))
        raw["metadata"].pop("uid", None)
        raw["metadata"]["annotations"][MIRROR_ANNOTATION] = pod.annotations[HASH_ANNOTATION]
        raw["metadata"]["ownerReferences"] = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "name": self.node_name,
                "uid": await self._node_uid(),
                "controller": True,
            }
        ]
        raw.pop("status", None)
        try:
            await self.api.create(f"/api/v1/namespaces/{pod.namespace}/pods", raw)
            self.mirrors[pod.full_name] = pod.annotations[HASH_ANNOTATION]
            self.mirror_created(pod.uid)
            log.info("created mirror pod %s", pod.full_name)
        except ApiError as err:
            if err.status != 409:
                log.warning("creating mirror pod %s failed: %s", pod.full_name, err)

    async def _node_uid(self) -> str:
        assert self.api is not None
        node = await self.api.get(f"/api/v1/nodes/{self.node_name}")
        return str(node["metadata"]["uid"])

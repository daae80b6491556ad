"""Volumes the agent provides itself: emptyDir, hostPath, configMap, secret, downwardAPI,
projected (service-account token, kube-root-ca.crt, downward API) — and env resolution.

    <root>/pods/<uid>/volumes/<kind>/<name>/

Files of configMap/secret/downwardAPI/projected volumes are written the way the
kubelet's atomic writer does: into a fresh `..<timestamp>` directory, then the
`..data` symlink is swapped by rename, and each visible name is a symlink into
`..data`. A running container sees either the old set or the new, never a mix.
"""

import asyncio
import base64
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cri_api.v1 import api_pb2

from kubelet_py.agent.apiclient import ApiError
from kubelet_py.agent.model import Container, Pod, Volume

_OWNED_KINDS = ("emptyDir", "configMap", "secret", "downwardAPI", "projected")
"""Volume kinds whose files get the pod's fsGroup (hostPath never does)."""


class VolumeError(Exception):
    """A volume could not be set up; the message names the volume and the cause."""


class ConfigError(Exception):
    """A container's env references something missing (CreateContainerConfigError)."""


class Api(Protocol):
    async def get(self, path: str, **params: str) -> Any: ...
    async def create(self, path: str, body: Any) -> Any: ...


class ExternalVolumes(Protocol):
    """Volumes mounted by someone else (CSI drivers, `csi.py`): set up per pod volume,
    released for the whole pod before its directory is removed."""

    def handles(self, vol: Volume) -> bool: ...
    async def setup(self, pod: Pod, vol: Volume) -> Path: ...
    async def release(self, pod_uid: str) -> None: ...


@dataclass
class TokenState:
    expires_at: float
    issued_at: float


def _write_atomic_dir(target: Path, files: Mapping[str, bytes], mode: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    stamp = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.time_ns() % 10**9}"
    data_dir = target / stamp
    data_dir.mkdir()
    for rel, content in files.items():
        p = data_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(content)
        p.chmod(mode)
    tmp_link = target / "..data_tmp"
    tmp_link.unlink(missing_ok=True)
    tmp_link.symlink_to(stamp)
    old = (target / "..data").readlink() if (target / "..data").is_symlink() else None
    tmp_link.replace(target / "..data")
    top = {rel.split("/", 1)[0] for rel in files}
    for name in top:
        link = target / name
        if not link.is_symlink():
            if link.exists():
                shutil.rmtree(link) if link.is_dir() else link.unlink()
            link.symlink_to(f"..data/{name}")
    for entry in target.iterdir():
        if not entry.name.startswith("..") and entry.is_symlink() and entry.name not in top:
            entry.unlink()
    if old is not None and str(old) != stamp:
        shutil.rmtree(target / old, ignore_errors=True)


RW_MASK = 0o660
RO_MASK = 0o440
EXEC_MASK = 0o110


def needs_ownership_change(root: Path, fs_group: int, *, read_only: bool) -> bool:
    """OnRootMismatch: change ownership unless the volume root already has group `fs_group`,
    the group permission bits and the setgid bit (upstream's requiresPermissionChange)."""
    try:
        st = root.stat()
    except OSError:
        return True
    if st.st_gid != fs_group or not stat.S_ISDIR(st.st_mode):
        return True
    want = (RO_MASK if read_only else RW_MASK) | EXEC_MASK
    return (st.st_mode & want) != want or not st.st_mode & stat.S_ISGID


def set_volume_ownership(root: Path, fs_group: int, *, read_only: bool, policy: str) -> bool:
    """Give everything under `root` group `fs_group` and group access (the setgid bit on
    directories, so new files inherit the group), as upstream's SetVolumeOwnership does.
    Returns False when policy OnRootMismatch found nothing to do. Blocking: use a thread."""
    if policy == "OnRootMismatch" and not needs_ownership_change(
        root, fs_group, read_only=read_only
    ):
        return False
    mask = RO_MASK if read_only else RW_MASK
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames, None]:
            path = dirpath if name is None else f"{dirpath}/{name}"
            try:
                st = os.lstat(path)
                os.lchown(path, -1, fs_group)
                if stat.S_ISLNK(st.st_mode):
                    continue
                extra = mask | (stat.S_ISGID | EXEC_MASK if stat.S_ISDIR(st.st_mode) else 0)
                os.chmod(path, stat.S_IMODE(st.st_mode) | extra)
            except FileNotFoundError:
                continue
    return True


def pod_memory_limit_bytes(pod: Pod) -> int | None:
    """The pod's memory limit if every container has one (what its cgroup gets), else None."""
    from kubelet_py.agent.quantity import bytes_of

    if not all("memory" in c.limits for c in (*pod.containers, *pod.init_containers)):
        return None
    regular = sum(bytes_of(c.limits["memory"]) for c in pod.containers)
    regular += sum(
        bytes_of(c.limits["memory"]) for c in pod.init_containers if c.restart_policy == "Always"
    )
    inits = [bytes_of(c.limits["memory"]) for c in pod.init_containers]
    return max([regular, *inits]) if pod.containers else None


def memory_volume_size(pod: Pod, size_limit: str | None, node_allocatable: int) -> int:
    """tmpfs size of a Memory emptyDir: the node's allocatable memory, lowered to the pod's
    memory limit and then to the volume's sizeLimit when those are smaller (upstream's
    calculateEmptyDirMemorySize)."""
    from kubelet_py.agent.quantity import bytes_of

    size = node_allocatable
    pod_limit = pod_memory_limit_bytes(pod)
    if pod_limit is not None and 0 < pod_limit <= size:
        size = pod_limit
    if size_limit:
        wanted = bytes_of(size_limit)
        if 0 < wanted <= size:
            size = wanted
    return size


async def _mount_tmpfs(path: Path, size_bytes: int, *, what: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        "mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0777", "tmpfs", str(path),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise VolumeError(f"{what}: mounting a tmpfs at {path} failed: {err.decode().strip()}")


def disk_usage_bytes(root: Path) -> int:
    """Bytes of disk that the tree at `root` uses (st_blocks, hard links once), like `du`."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            try:
                st = os.lstat(f"{dirpath}/{name}")
            except FileNotFoundError:
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            total += st.st_blocks * 512
    return total


def _field(pod: Pod, path: str, *, node_name: str, host_ip: str, pod_ip: str) -> str:
    if path.startswith("metadata.labels['") or path.startswith("metadata.annotations['"):
        key = path.split("['", 1)[1].rstrip("']")
        src = pod.labels if path.startswith("metadata.labels") else pod.annotations
        return src.get(key, "")
    simple = {
        "metadata.name": pod.name,
        "metadata.namespace": pod.namespace,
        "metadata.uid": pod.uid,
        "spec.nodeName": node_name,
        "spec.serviceAccountName": pod.service_account,
        "status.hostIP": host_ip,
        "status.podIP": pod_ip,
        "status.podIPs": pod_ip,
        "status.hostIPs": host_ip,
    }
    if path in simple:
        return simple[path]
    if path == "metadata.labels":
        return "\n".join(f'{k}="{v}"' for k, v in sorted(pod.labels.items()))
    if path == "metadata.annotations":
        return "\n".join(f'{k}="{v}"' for k, v in sorted(pod.annotations.items()))
    raise ConfigError(f"unsupported fieldRef {path!r}")


class VolumeManager:
    def __init__(
        self,
        root: Path,
        *,
        api: Api | None,
        node_name: str,
        node_allocatable_memory: int = 0,
    ) -> None:
        self.root = root
        self.api = api
        self.node_name = node_name
        self.node_allocatable_memory = node_allocatable_memory
        self.tokens: dict[tuple[str, str], TokenState] = {}
        self.external: ExternalVolumes | None = None

    def pod_dir(self, uid: str) -> Path:
        return self.root / "pods" / uid

    async def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        if self.api is None:
            return None
        try:
            result: dict[str, Any] = await self.api.get(
                f"/api/v1/namespaces/{namespace}/{kind}/{name}"
            )
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return result

    async def setup(self, pod: Pod, *, host_ip: str, pod_ip: str) -> dict[str, Path]:
        """Make every volume of `pod`; return name -> host path. Raises VolumeError."""
        paths: dict[str, Path] = {}
        for vol in pod.volumes:
            paths[vol.name] = await self._setup_one(pod, vol, host_ip=host_ip, pod_ip=pod_ip)
            if pod.fs_group is not None and vol.kind in _OWNED_KINDS:
                # emptyDir is writable; the API-object volumes are read-only (upstream's masks)
                await asyncio.to_thread(
                    set_volume_ownership,
                    paths[vol.name],
                    pod.fs_group,
                    read_only=vol.kind != "emptyDir",
                    policy=pod.fs_group_change_policy,
                )
        return paths

    def size_limited_dirs(self, pod: Pod) -> list[tuple[str, Path, str]]:
        """(volume name, host path, sizeLimit) of the pod's disk-backed emptyDirs with a
        sizeLimit: the eviction manager measures these (tmpfs ones the kernel limits)."""
        out = []
        for vol in pod.volumes:
            limit = vol.source.get("sizeLimit")
            if vol.kind == "emptyDir" and limit and vol.source.get("medium", "") != "Memory":
                out.append((vol.name, self.pod_dir(pod.uid) / "volumes/emptyDir" / vol.name, limit))
        return out

    async def _setup_one(self, pod: Pod, vol: Volume, *, host_ip: str, pod_ip: str) -> Path:
        base = self.pod_dir(pod.uid) / "volumes" / vol.kind / vol.name
        src = vol.source
        what = f"volume {vol.name!r} of pod {pod.full_name}"
        if vol.kind == "emptyDir":
            base.mkdir(parents=True, exist_ok=True)
            medium = str(src.get("medium") or "")
            if medium == "Memory":
                if not base.is_mount():  # a restarted agent finds it mounted already
                    size = memory_volume_size(
                        pod, src.get("sizeLimit"), self.node_allocatable_memory
                    )
                    await _mount_tmpfs(base, size, what=what)
            elif medium:
                raise VolumeError(f"{what}: emptyDir medium {medium!r} is not supported")
            mode = stat.S_IMODE(base.stat().st_mode)
            if mode & 0o777 != 0o777:  # keep a setgid bit that fsGroup ownership set
                base.chmod(mode | 0o777)
            return base
        if vol.kind == "hostPath":
            return self._host_path(str(src.get("path", "")), str(src.get("type", "")), what=what)
        mode = int(src.get("defaultMode", 0o644))
        if vol.kind in ("configMap", "secret"):
            files = await self._object_files(pod, vol.kind, src, what=what)
            if files is None:
                return base  # optional and absent: an empty directory
            _write_atomic_dir(base, files, mode)
            return base
        if vol.kind == "downwardAPI":
            files = {
                item["path"]: _field(
                    pod,
                    item["fieldRef"]["fieldPath"],
                    node_name=self.node_name,
                    host_ip=host_ip,
                    pod_ip=pod_ip,
                ).encode()
                for item in src.get("items") or []
                if "fieldRef" in item
            }
            _write_atomic_dir(base, files, mode)
            return base
        if vol.kind == "projected":
            projected: dict[str, bytes] = {}
            for source in src.get("sources") or []:
                if "serviceAccountToken" in source:
                    sat = source["serviceAccountToken"]
                    projected[sat["path"]] = await self._token(pod, sat, what=what)
                elif "configMap" in source or "secret" in source:
                    kind = "configMap" if "configMap" in source else "secret"
                    got = await self._object_files(pod, kind, source[kind], what=what)
                    projected.update(got or {})
                elif "downwardAPI" in source:
                    for item in source["downwardAPI"].get("items") or []:
                        if "fieldRef" in item:
                            projected[item["path"]] = _field(
                                pod,
                                item["fieldRef"]["fieldPath"],
                                node_name=self.node_name,
                                host_ip=host_ip,
                                pod_ip=pod_ip,
                            ).encode()
            _write_atomic_dir(base, projected, mode)
            return base
        if self.external is not None and self.external.handles(vol):
            return await self.external.setup(pod, vol)
        raise VolumeError(f"{what}: volume type {src.get('type', vol.kind)!r} is not supported")

    def _host_path(self, path: str, kind: str, *, what: str) -> Path:
        p = Path(path)
        if not p.is_absolute():
            raise VolumeError(f"{what}: hostPath {path!r} is not absolute")
        checks = {
            "Directory": stat.S_ISDIR,
            "File": stat.S_ISREG,
            "Socket": stat.S_ISSOCK,
            "CharDevice": stat.S_ISCHR,
            "BlockDevice": stat.S_ISBLK,
        }
        if kind == "DirectoryOrCreate":
            p.mkdir(parents=True, exist_ok=True, mode=0o755)
        elif kind == "FileOrCreate":
            p.parent.mkdir(parents=True, exist_ok=True)
            p.touch(exist_ok=True)
        elif kind in checks:
            try:
                st = p.stat()
            except FileNotFoundError as err:
                raise VolumeError(
                    f"{what}: hostPath type check failed: {path} does not exist"
                ) from err
            if not checks[kind](st.st_mode):
                raise VolumeError(f"{what}: hostPath type check failed: {path} is not a {kind}")
        elif kind:
            raise VolumeError(f"{what}: unknown hostPath type {kind!r}")
        return p

    async def _object_files(
        self, pod: Pod, kind: str, src: Mapping[str, Any], *, what: str
    ) -> dict[str, bytes] | None:
        name = src.get("name") or src.get("secretName") or ""
        optional = bool(src.get("optional"))
        obj = await self._get(
            "configmaps" if kind == "configMap" else "secrets", pod.namespace, name
        )
        if obj is None:
            if optional:
                return None
            raise VolumeError(f"{what}: {kind} {pod.namespace}/{name} not found")
        if kind == "secret":
            data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
        else:
            data = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        items = src.get("items")
        if items:
            out = {}
            for item in items:
                if item["key"] not in data:
                    if optional:
                        continue
                    raise VolumeError(f"{what}: key {item['key']!r} not in {kind} {name}")
                out[item["path"]] = data[item["key"]]
            return out
        return data

    async def _token(self, pod: Pod, sat: Mapping[str, Any], *, what: str) -> bytes:
        if self.api is None:
            raise VolumeError(f"{what}: service account tokens need an API server")
        sa = pod.service_account or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [sat["audience"]] if sat.get("audience") else [],
                "expirationSeconds": int(sat.get("expirationSeconds", 3607)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.name,
                    "uid": pod.uid,
                },
            },
        }
        try:
            resp = await self.api.create(
                f"/api/v1/namespaces/{pod.namespace}/serviceaccounts/{sa}/token", body
            )
        except ApiError as err:
            raise VolumeError(
                f"{what}: TokenRequest for service account {sa} failed: {err}"
            ) from err
        expiry = resp["status"]["expirationTimestamp"]
        self.tokens[(pod.uid, sat["path"])] = TokenState(
            expires_at=time.mktime(time.strptime(expiry, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone,
            issued_at=time.time(),
        )
        return str(resp["status"]["token"]).encode()

    def needs_refresh(self, uid: str, *, now: float) -> bool:
        """A projected token past 80% of its lifetime (the kubelet's rule) must be renewed."""
        for (pod_uid, _), st in self.tokens.items():
            if pod_uid == uid and now >= st.issued_at + 0.8 * (st.expires_at - st.issued_at):
                return True
        return False

    def mounts_for(self, pod: Pod, c: Container, paths: Mapping[str, Path]) -> list[Any]:
        out = []
        for m in c.volume_mounts:
            if m.name not in paths:
                raise VolumeError(f"container {c.name}: volumeMount {m.name!r} has no volume")
            host = paths[m.name]
            if m.sub_path:
                if ".." in Path(m.sub_path).parts or Path(m.sub_path).is_absolute():
                    raise VolumeError(
                        f"container {c.name}: subPath {m.sub_path!r} escapes the volume"
                    )
                host = host / m.sub_path
                if not host.exists():
                    host.mkdir(parents=True)
            out.append(
                api_pb2.Mount(
                    container_path=m.mount_path, host_path=str(host), readonly=m.read_only
                )
            )
        return out

    async def release(self, uid: str) -> None:
        """Unmount the pod's externally mounted volumes (CSI) through their drivers."""
        if self.external is not None:
            await self.external.release(uid)

    def cleanup(self, uid: str) -> None:
        """Remove the pod's volume dirs (unmounting any tmpfs first)."""
        d = self.pod_dir(uid)
        for p in sorted(d.rglob("*"), key=lambda x: -len(x.parts)) if d.exists() else []:
            if p.is_dir() and os.path.ismount(p):
                subprocess.run(["umount", "-l", str(p)], check=False)
        shutil.rmtree(d, ignore_errors=True)
        for key in [k for k in self.tokens if k[0] == uid]:
            del self.tokens[key]

    async def resolve_env(
        self, pod: Pod, c: Container, *, host_ip: str, pod_ip: str, service_env: Mapping[str, str]
    ) -> list[tuple[str, str]]:
        """envFrom, then env (value, fieldRef, resourceFieldRef, configMap/secret keys), with
        `$(VAR)` expansion against what came before — the kubelet's order."""
        from kubelet_py.agent.criconfig import expand
        from kubelet_py.agent.quantity import parse_quantity

        env: dict[str, str] = dict(service_env)
        for ef in c.env_from:
            obj = await self._get(
                "configmaps" if ef.kind == "configMap" else "secrets", pod.namespace, ef.name
            )
            if obj is None:
                if ef.optional:
                    continue
                raise ConfigError(f"{ef.kind} {pod.namespace}/{ef.name} not found")
            for k, v in (obj.get("data") or {}).items():
                env[ef.prefix + k] = base64.b64decode(v).decode() if ef.kind == "secret" else v
        for e in c.env:
            if e.value is not None:
                env[e.name] = expand(e.value, env)
            elif e.field_path:
                env[e.name] = _field(
                    pod, e.field_path, node_name=self.node_name, host_ip=host_ip, pod_ip=pod_ip
                )
            elif e.resource:
                kind, _, res = e.resource.partition(".")
                source = c.limits if kind == "limits" else c.requests
                value = source.get(res)
                if value is None:
                    env[e.name] = "0" if kind == "requests" else str(os.cpu_count() or 1)
                else:
                    q = parse_quantity(value)
                    env[e.name] = str(int(-(-q // 1))) if res == "cpu" else str(int(q))
            elif e.config_map_key or e.secret_key:
                kind = "configmaps" if e.config_map_key else "secrets"
                name, key, optional = e.config_map_key or e.secret_key  # type: ignore[misc]
                obj = await self._get(kind, pod.namespace, name)
                data = (obj or {}).get("data") or {}
                if key not in data:
                    if optional:
                        continue
                    what = "configmap" if e.config_map_key else "secret"
                    raise ConfigError(f"couldn't find key {key} in {what} {pod.namespace}/{name}")
                env[e.name] = base64.b64decode(data[key]).decode() if e.secret_key else data[key]
        return list(env.items())

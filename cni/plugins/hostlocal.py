"""The `host-local` IPAM plugin: addresses from node-local ranges, kept in files.

Layout (the reference plugin's, so tools that know it can read ours):
`<dataDir>/<network>/<ip>` holds "<containerID>\\r\\n<ifname>" for each
allocated address, `last_reserved_ip.<set>` remembers where round-robin
stopped, and every read-modify-write runs under flock(2) on `<network>/lock`,
which makes concurrent ADDs from parallel pod starts safe.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os

from cni import ipam
from cni.errors import CNIError, Code
from cni.plugins import skel
from cni.types import IPAddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_LAST = "last_reserved_ip."


def _read(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().decode()


def _write(path: str, text: str) -> None:
    with open(path, "wb") as fh:
        fh.write(text.encode())


class _Lock:
    """flock(2) on a store's lock file (a class: no `contextlib` import in plugins)."""

    def __init__(self, directory: str) -> None:
        self.dir = directory
        self._fd = -1

    def __enter__(self) -> None:
        try:
            os.makedirs(self.dir, exist_ok=True)
            fd = os.open(
                os.path.join(self.dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
        except OSError as err:
            raise CNIError(Code.IO_FAILURE, f"cannot open IPAM store {self.dir}", str(err)) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def __exit__(self, *exc: object) -> None:
        fd, self._fd = self._fd, -1
        os.close(fd)


class Store:
    """Allocation files of one network under a data directory."""

    def __init__(self, data_dir: str, network: str) -> None:
        if not network or "/" in network or network in (".", ".."):
            raise CNIError(Code.INVALID_CONFIG, f"bad network name {network!r}")
        self.dir = os.path.join(data_dir, network)

    def locked(self) -> _Lock:
        """`with store.locked():` holds flock(2) on `<dir>/lock` for the body."""
        return _Lock(self.dir)

    def allocations(self) -> dict[IPAddress, tuple[str, str]]:
        """Address -> (containerID, ifname) for every allocation on disk."""
        out: dict[IPAddress, tuple[str, str]] = {}
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return out
        for name in names:
            try:
                ip = ipaddress.ip_address(name)
            except ValueError:
                continue
            try:
                text = _read(os.path.join(self.dir, name))
            except FileNotFoundError:
                continue
            cid, _, ifname = text.partition("\r\n")
            out[ip] = (cid.strip(), ifname.strip())
        return out

    def last_reserved(self, index: int) -> IPAddress | None:
        try:
            return ipaddress.ip_address(_read(os.path.join(self.dir, f"{_LAST}{index}")).strip())
        except (FileNotFoundError, ValueError):
            return None

    def reserve(self, ip: IPAddress, container_id: str, ifname: str, index: int) -> None:
        path = os.path.join(self.dir, str(ip))
        tmp = os.path.join(self.dir, f".{ip}.tmp")
        try:
            _write(tmp, f"{container_id}\r\n{ifname}")
            os.rename(tmp, path)
            _write(os.path.join(self.dir, f"{_LAST}{index}"), str(ip))
        except OSError as err:
            raise CNIError(Code.IO_FAILURE, f"cannot record allocation of {ip}", str(err)) from err

    def release(self, ip: IPAddress) -> None:
        try:
            os.unlink(os.path.join(self.dir, str(ip)))
        except FileNotFoundError:
            pass


def _config(request: skel.Request) -> ipam.IPAMConfig:
    raw = request.config.get("ipam")
    if not isinstance(raw, dict):
        raise CNIError(Code.INVALID_CONFIG, "host-local: the configuration has no ipam object")
    return ipam.parse_config(raw, request.runtime_config)


def _requested(request: skel.Request) -> list[IPAddress]:
    """Addresses asked for through CNI_ARGS IP=, args.cni.ips or runtimeConfig.ips."""
    wanted: list[str] = []
    if request.args.get("IP"):
        wanted += request.args["IP"].split(",")
    args = request.config.get("args") or {}
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        wanted += [str(x) for x in args["cni"].get("ips") or ()]
    wanted += [str(x) for x in request.runtime_config.get("ips") or ()]
    out = []
    for text in wanted:
        try:
            out.append(ipaddress.ip_interface(text.strip()).ip)
        except ValueError as err:
            raise CNIError(Code.INVALID_CONFIG, f"invalid requested IP {text!r}") from err
    return out


def add(request: skel.Request) -> dict[str, Any]:
    cfg = _config(request)
    store = Store(cfg.data_dir, request.network)
    requested = _requested(request)
    ips: list[dict[str, Any]] = []
    with store.locked():
        current = store.allocations()
        mine = [
            ip for ip, owner in current.items() if owner == (request.container_id, request.ifname)
        ]
        if mine:
            raise CNIError(
                Code.INVALID_CONFIG,
                f"{request.container_id}/{request.ifname} already has {', '.join(map(str, mine))}",
                "DEL the attachment before adding it again",
            )
        chosen: list[IPAddress] = []
        try:
            for index, range_set in enumerate(cfg.range_sets):
                want = next((ip for ip in requested if any(ip in r for r in range_set)), None)
                rng, ip = ipam.allocate(
                    range_set, current.keys(), store.last_reserved(index), requested=want
                )
                store.reserve(ip, request.container_id, request.ifname, index)
                chosen.append(ip)
                entry: dict[str, Any] = {"address": f"{ip}/{rng.subnet.prefixlen}"}
                if rng.gateway is not None:
                    entry["gateway"] = str(rng.gateway)
                ips.append(entry)
        except CNIError:
            for ip in chosen:
                store.release(ip)
            raise
    out: dict[str, Any] = {"cniVersion": request.cni_version, "ips": ips}
    if cfg.routes:
        out["routes"] = [r.to_json() for r in cfg.routes]
    dns = request.config.get("dns")
    if isinstance(dns, dict) and dns:
        out["dns"] = dns
    return out


def delete(request: skel.Request) -> None:
    cfg = _config(request)
    store = Store(cfg.data_dir, request.network)
    with store.locked():
        for ip, owner in store.allocations().items():
            if owner == (request.container_id, request.ifname):
                store.release(ip)
    return None


def check(request: skel.Request) -> None:
    cfg = _config(request)
    store = Store(cfg.data_dir, request.network)
    with store.locked():
        mine = {
            ip
            for ip, o in store.allocations().items()
            if o == (request.container_id, request.ifname)
        }
    if not mine:
        raise CNIError(
            Code.INVALID_CONFIG,
            f"host-local: no allocation for {request.container_id}/{request.ifname}",
        )
    prev = request.prev_result
    if prev is not None:
        for ipc in prev.ips:
            if ipc.address.ip not in mine:
                raise CNIError(
                    Code.INVALID_CONFIG,
                    f"host-local: {ipc.address.ip} is not allocated to {request.container_id}",
                )
    return None


def status(request: skel.Request) -> None:
    cfg = _config(request)
    store = Store(cfg.data_dir, request.network)
    taken = store.allocations().keys()
    for range_set in cfg.range_sets:
        if ipam.free_count(range_set, taken) <= 0:
            raise CNIError(
                Code.NOT_AVAILABLE,
                "host-local: no free addresses",
                "every address of " + ", ".join(str(r.subnet) for r in range_set) + " is allocated",
            )
    return None


def gc(request: skel.Request) -> None:
    cfg = _config(request)
    valid = request.valid_attachments()
    store = Store(cfg.data_dir, request.network)
    with store.locked():
        for ip, owner in store.allocations().items():
            if owner not in valid:
                store.release(ip)
    return None


PLUGIN = skel.Plugin(name="host-local", add=add, delete=delete, check=check, status=status, gc=gc)


def main() -> int:
    return skel.run(PLUGIN)

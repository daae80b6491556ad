"""Network namespace helpers shared by the plugins and the vxlan reconciler.

`enter(path)` moves the calling thread into a namespace and back; `iproute()`
opens a pyroute2 IPRoute socket in the current (or a given) namespace. A
netlink socket keeps the namespace it was made in, so plugins open one socket
per namespace and never fork. pyroute2's package `__init__` imports every
backend it has (~0.3 s); `_import_iproute` loads only the IPRoute module, which
matters for plugins that live for a few hundred milliseconds.
"""

from __future__ import annotations

import os
import sys

from cni.errors import CNIError, Code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CLONE_NEWNET = 0x40000000
_setns_fn: Any = None


def _setns(fd: int) -> None:
    global _setns_fn
    if _setns_fn is None:
        from cni import _ffi

        _setns_fn = _ffi.Library(None).function(
            "setns", _ffi.c_int, [_ffi.c_int, _ffi.c_int], use_errno=True
        )
    if _setns_fn(fd, _CLONE_NEWNET) != 0:
        from cni._ffi import get_errno

        err = get_errno()
        raise OSError(err, os.strerror(err))


class enter:
    """Run the body with this thread in the network namespace at `path` (code 3 if missing).

    A class rather than @contextmanager: `contextlib` is a plugin start-up import less.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fds: tuple[int, int] | None = None

    def __enter__(self) -> None:
        path = self.path
        try:
            target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as err:
            raise CNIError(
                Code.UNKNOWN_CONTAINER, f"network namespace {path} does not exist", str(err)
            ) from err
        try:
            home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            os.close(target)
            raise
        try:
            _setns(target)
        except OSError as err:
            os.close(target)
            os.close(home)
            raise CNIError(
                Code.UNKNOWN_CONTAINER, f"{path} is not a network namespace", str(err)
            ) from err
        except BaseException:
            os.close(target)
            os.close(home)
            raise
        self._fds = (target, home)

    def __exit__(self, *exc: object) -> None:
        assert self._fds is not None
        target, home = self._fds
        self._fds = None
        try:
            _setns(home)
        finally:
            os.close(target)
            os.close(home)


def _stub_packages(*names: str) -> None:
    """Empty package modules: pyroute2's __init__ files import every backend it has."""
    import importlib.util
    import types

    for name in names:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            break
        package = types.ModuleType(name)
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec
        package.__file__ = spec.origin
        sys.modules[name] = package


def _import_iproute() -> Any:
    """pyroute2's IPRoute class without running the package's heavy `__init__`."""
    # pyroute2 and pyroute2.iproute __init__s import ndb, ipdb, conntrack and the mock
    # IPRoute, none of which a plugin uses.
    _stub_packages("pyroute2", "pyroute2.iproute")
    try:
        from pyroute2.iproute.linux import IPRoute
    except ImportError:
        sys.modules.pop("pyroute2.iproute", None)
        sys.modules.pop("pyroute2", None)
        from pyroute2 import IPRoute
    return IPRoute


def delete_udp_conntrack(ports: list[int]) -> int:
    """Delete conntrack entries of UDP flows to these destination ports (this namespace).

    A UDP "connection" to a host port keeps its DNAT to the old pod until it times
    out; a pod re-created behind the same port would never see those packets.
    Returns how many entries were deleted.
    """
    if not ports:
        return 0
    _stub_packages("pyroute2")
    from pyroute2.conntrack import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    deleted = 0
    ct = Conntrack()
    try:
        for port in ports:
            wanted = NFCTAttrTuple(proto=17, dport=port)
            for entry in list(ct.dump_entries(tuple_orig=wanted)):
                try:
                    ct.delete(entry)
                    deleted += 1
                except Exception as err:
                    if netlink_error_code(err) != 2:  # ENOENT: it expired meanwhile
                        raise
    finally:
        ct.close()
    return deleted


def iproute(netns_path: str | None = None) -> Any:
    """An IPRoute socket in the current namespace, or in the one at `netns_path`."""
    cls = _import_iproute()
    if netns_path is None:
        return cls()
    with enter(netns_path):
        return cls()


def netlink_error_code(err: BaseException) -> int | None:
    """The errno of a pyroute2 NetlinkError (or OSError), else None."""
    code = getattr(err, "code", None)
    if isinstance(code, int):
        return code
    return getattr(err, "errno", None)


def write_sysctl(key: str, value: str) -> None:
    """Write /proc/sys/<key> ('net/ipv4/ip_forward') in the current namespace.

    Keys are slash-separated because interface names may contain dots.
    """
    path = "/proc/sys/" + key
    try:
        with open(path, "w") as fh:  # noqa: PTH123 - one tiny write on a hot path
            fh.write(value)
    except OSError as err:
        raise CNIError(Code.INTERNAL, f"failed to set sysctl {key}={value}", str(err)) from err

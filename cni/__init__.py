"""CNI 1.x plugins as executables, and the runtime-side CNI caller.

Bridge, host-local IPAM, loopback, portmap, an isolation firewall and a
flannel-like VXLAN overlay (`cni.vxlan`); the caller (`NetworkManager`) loads
conflists, chains plugins and caches results as the CNI spec says.
Independent of `kubelet_py`, `cri` and `csi_volumes`. Issue 7.

The names below load on first use: plugin processes import `cni.plugins.*`
and must not pay for the caller's modules at every start.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from cni.caller import Attachment, NetworkManager, PodRef
    from cni.conflist import NetworkConfigList
    from cni.errors import CNIError, Code, ConfigError, PluginFailedError, PluginNotFoundError
    from cni.types import PortMapping, Result

_EXPORTS = {
    "Attachment": "cni.caller",
    "NetworkManager": "cni.caller",
    "PodRef": "cni.caller",
    "NetworkConfigList": "cni.conflist",
    "Code": "cni.errors",
    "CNIError": "cni.errors",
    "ConfigError": "cni.errors",
    "PluginFailedError": "cni.errors",
    "PluginNotFoundError": "cni.errors",
    "PortMapping": "cni.types",
    "Result": "cni.types",
}

__all__ = [
    "Attachment",
    "CNIError",
    "Code",
    "ConfigError",
    "NetworkConfigList",
    "NetworkManager",
    "PluginFailedError",
    "PluginNotFoundError",
    "PodRef",
    "PortMapping",
    "Result",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cni' has no attribute {name!r}")
    import importlib  # here, not at the top: it imports `warnings`

    return getattr(importlib.import_module(module), name)

"""CNI 1.x plugins as executables, and the runtime-side CNI caller.

Bridge, host-local IPAM, loopback, portmap, isolation firewall and a VXLAN
overlay; the caller loads conflists, chains plugins and caches results as the
CNI spec says. Independent of `kubelet_py`, `cri` and `csi_volumes`. Issue 7.
"""

__all__: list[str] = []

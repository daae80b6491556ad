"""CSI drivers as real CSI gRPC services (the S3 driver first).

Also the plugin-registration side and the kopf-based provisioner. Independent
of `kubelet_py`, `cri` and `cni`: the agent talks to drivers over CSI gRPC on
unix sockets, as the upstream kubelet does. Issue 8.
"""

__all__: list[str] = []

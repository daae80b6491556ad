"""The container runtime behind a CRI v1 interface.

Image service (OCI distribution client, sha256 content store, overlay2 layers)
and runtime service (sandboxes, containers, cgroups, logs, exec), served as
`runtime.v1` gRPC on a unix socket. Nothing here imports `kubelet_py`: the agent
reaches this package only through the CRI shape. Work tracked in issues 3 and 4.
"""

__all__: list[str] = []

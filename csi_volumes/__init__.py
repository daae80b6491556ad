"""CSI drivers as real CSI gRPC services (the S3 driver first).

Also the plugin-registration side and the kopf-based provisioner. Independent
of `kubelet_py`, `cri` and `cni`: the agent talks to drivers over CSI gRPC on
unix sockets, as the upstream kubelet does. Issue 8.

    csi_volumes.api.csi.v1              csi_pb2 / csi_pb2_grpc (CSI spec v1.13.0 stubs)
    csi_volumes.api.pluginregistration.v1  api_pb2 / api_pb2_grpc (kubelet plugin registration)
    csi_volumes.registration            driver-side Registration server, kubelet-side client
    csi_volumes.s3                      the S3 driver (server.S3Driver, DRIVER_NAME)
    csi_volumes.provisioner             kopf provisioner for PVCs of our StorageClasses
    csi_volumes.cli                     `kubelet-py-csi s3 ...` / `kubelet-py-csi provisioner ...`
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

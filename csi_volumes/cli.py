"""`kubelet-py-csi`: run the S3 CSI driver or the provisioner.

    kubelet-py-csi s3 --endpoint unix:///run/kubelet-py/csi/s3.sock --node-id node1 \\
        [--state-dir DIR] [--mode all|node|controller] [--registration-dir DIR] \\
        [--kubeconfig FILE]
    kubelet-py-csi provisioner --kubeconfig FILE --controller-endpoint unix:///...sock
"""

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from csi_volumes.s3.server import DRIVER_NAME, DriverConfig, S3Driver


def _socket_path(endpoint: str) -> Path:
    if endpoint.startswith("unix://"):
        return Path(endpoint.removeprefix("unix://"))
    if endpoint.startswith("/"):
        return Path(endpoint)
    raise SystemExit(f"error: endpoint {endpoint!r} is not unix:///path")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubelet-py-csi", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    s3 = sub.add_parser("s3", help="serve the S3 CSI driver on a unix socket")
    s3.add_argument("--endpoint", required=True, help="unix:///path/to/csi.sock")
    s3.add_argument("--node-id", required=True)
    s3.add_argument("--state-dir", type=Path, default=Path("/var/lib/kubelet-py/csi/s3"))
    s3.add_argument("--mode", choices=["all", "node", "controller"], default="all")
    s3.add_argument("--driver-name", default=DRIVER_NAME)
    s3.add_argument("--health-interval-s", type=float, default=10.0)
    s3.add_argument(
        "--registration-dir",
        type=Path,
        help="serve pluginregistration.v1 in this directory (the kubelet's plugins_registry)",
    )
    s3.add_argument(
        "--kubeconfig",
        type=Path,
        help="post volume events (a dead FUSE mount remounted) as Events on the pods using"
        " the volume; default: the in-cluster service account when run in a pod, else none",
    )

    prov = sub.add_parser("provisioner", help="provision PVs for PVCs of our StorageClasses")
    prov.add_argument("--kubeconfig", type=Path, help="default: in-cluster or ~/.kube/config")
    prov.add_argument("--controller-endpoint", required=True, help="the driver's CSI socket")
    prov.add_argument("--driver-name", default=DRIVER_NAME)
    prov.add_argument("--namespace", action="append", default=[], help="watch only these")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.command == "s3":
        config = DriverConfig(
            endpoint=_socket_path(args.endpoint),
            node_id=args.node_id,
            state_dir=args.state_dir,
            name=args.driver_name,
            controller=args.mode in ("all", "controller"),
            node=args.mode in ("all", "node"),
            health_interval_s=args.health_interval_s,
            registration_dir=args.registration_dir,
            kubeconfig=args.kubeconfig,
        )
        try:
            asyncio.run(S3Driver(config).run())
        except KeyboardInterrupt:
            pass
        return 0
    from csi_volumes.provisioner import run_provisioner

    return run_provisioner(
        kubeconfig=args.kubeconfig,
        controller_socket=_socket_path(args.controller_endpoint),
        driver_name=args.driver_name,
        namespaces=tuple(args.namespace),
    )


if __name__ == "__main__":
    sys.exit(main())

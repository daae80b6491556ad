"""Pod start and stop through the kubelet's CSI side, beside an emptyDir pod on the same node.

    cd /work/main && python3 bench/csi_kubelet.py [--runs 10]

One kubelet-py node (lab netns) with the S3 driver registered through its
plugins_registry, the kopf provisioner, SeaweedFS (the environment of
tests/integration/csi_kubelet, `csi_environment`). One RWX PVC is provisioned once
(its create → Bound time is printed); then pods alternate:

- anchor: a busybox pod with an emptyDir volume;
- ours:   the same pod with the PVC (NodeStage = s3fs FUSE mount, NodePublish = bind).

Start = API create → phase Running (polled every 20 ms); stop = API delete (grace 0 s
for the container, 1 s asked) → the pod is gone from the API, plus for the PVC pod the
moment its staging and target mounts are gone from mountinfo (unpublish + unstage).
The difference of the medians is what a CSI volume costs a pod. Timings vary with the
load on this shared VM; the two kinds alternate so both see the same load.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import REPO, code_version, loadavg, log, median, percentile

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _pod(name: str, node: str, volume: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "c",
                    "image": "example.com/test/busybox:1",
                    "command": ["sh", "-c", "echo x > /data/f; while true; do sleep 1; done"],
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                }
            ],
            "volumes": [{"name": "data", **volume}],
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=10, help="pods of each kind")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: namespaces, mounts, FUSE")
        return 2
    from kubernetes import client, config

    from kubelet_py.devcluster import LocalCluster, ensure_binaries
    from tests.integration.csi_kubelet.conftest import csi_environment, make_claim, our_mounts

    load_before = loadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-csik-"))
    cluster = LocalCluster(
        binaries=ensure_binaries(progress=log),
        work_dir=work / "cluster",
        prefix=f"bcsik-{secrets.token_hex(3)}",
        progress=lambda _m: None,
    )
    times: dict[str, dict[str, list[float]]] = {
        "emptyDir": {"start": [], "stop": []},
        "CSI PVC": {"start": [], "stop": [], "unmounted": []},
    }
    bound_s = 0.0
    try:
        log("starting the control plane ...")
        cluster.start()
        api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
        log("starting SeaweedFS, the node, the driver and the provisioner ...")
        with csi_environment(cluster, api, work / "images", node_count=1) as env:
            core = env.core
            node = env.nodes[0]
            t0 = time.monotonic()
            claim = make_claim(env)
            bound_s = time.monotonic() - t0
            kinds = {
                "emptyDir": {"emptyDir": {}},
                "CSI PVC": {"persistentVolumeClaim": {"claimName": claim}},
            }
            for i in range(args.runs):
                order = list(kinds) if i % 2 == 0 else list(reversed(kinds))
                for kind in order:
                    name = f"b{i}-{secrets.token_hex(3)}"
                    t0 = time.monotonic()
                    core.create_namespaced_pod(env.namespace, _pod(name, node.name, kinds[kind]))
                    while core.read_namespaced_pod(name, env.namespace).status.phase != "Running":
                        if time.monotonic() - t0 > 120:
                            raise RuntimeError(f"{kind} pod {name} not Running after 120 s")
                        time.sleep(0.02)
                    times[kind]["start"].append(time.monotonic() - t0)
                    t0 = time.monotonic()
                    core.delete_namespaced_pod(name, env.namespace, grace_period_seconds=1)
                    gone = False
                    while not gone:
                        try:
                            core.read_namespaced_pod(name, env.namespace)
                        except client.ApiException as err:
                            gone = err.status == 404
                        if time.monotonic() - t0 > 120:
                            raise RuntimeError(f"{kind} pod {name} not gone after 120 s")
                        time.sleep(0.02)
                    times[kind]["stop"].append(time.monotonic() - t0)
                    if kind == "CSI PVC":
                        while our_mounts(node.root) and time.monotonic() - t0 < 120:
                            time.sleep(0.02)
                        times[kind]["unmounted"].append(time.monotonic() - t0)
                log(f"run {i + 1}/{args.runs} done")
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
    print()
    print(f"kubelet-py CSI pod volumes, {args.runs} pods of each kind, one node")
    print(f"code {code_version()}; load before {load_before}, after {loadavg()}")
    print(f"PVC create -> Bound (provisioner CreateVolume + PV bind): {bound_s:.2f} s")
    print()
    print(f"| {'pod volume':<10} | {'phase':<28} | {'median s':>8} | {'p90 s':>6} |")
    print(f"| {'-' * 10} | {'-' * 28} | {'-' * 8:>8} | {'-' * 6:>6} |")
    labels = {
        "start": "create -> Running",
        "stop": "delete -> gone from the API",
        "unmounted": "delete -> unstaged",
    }
    for kind, phases in times.items():
        for phase, values in phases.items():
            print(
                f"| {kind:<10} | {labels[phase]:<28} | {median(values):>8.2f} |"
                f" {percentile(values, 90):>6.2f} |"
            )
    extra = median(times["CSI PVC"]["start"]) - median(times["emptyDir"]["start"])
    print(f"\nthe CSI volume adds {extra:+.2f} s (median) to a pod's start")
    return 0


if __name__ == "__main__":
    sys.exit(main())

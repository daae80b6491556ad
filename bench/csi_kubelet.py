"""Pod start and stop through the kubelet's CSI side, beside an emptyDir pod on the same node.

    cd /work/main && python3 bench/csi_kubelet.py [--runs 10]

One kubelet-py node (lab netns) with the S3 driver registered through its
plugins_registry, the kopf provisioner, SeaweedFS (the environment of
tests/integration/csi_kubelet, `csi_environment`). One RWX PVC is provisioned once
(its create → Bound time is printed); then pods alternate:

- anchor: a busybox pod with an emptyDir volume;
- ours:   the same pod with the PVC (NodeStage = s3fs FUSE mount, NodePublish = bind),
          and with an inline CSI volume (NodePublish = s3fs FUSE mount + bind, no stage).

Start = API create → phase Running (polled every 20 ms); stop = API delete (grace 0 s
for the container, 1 s asked) → the pod is gone from the API, plus for the PVC pod the
moment its staging and target mounts are gone from mountinfo (unpublish + unstage).
The difference of the medians is what a CSI volume costs a pod. Timings vary with the
load on this shared VM; the kinds rotate so all see the same load.

Then `--kills` times the FUSE daemon under a running pod (writing every 50 ms) is killed:
the outage is the span, in the container's own CRI log timestamps, from its first failed
write to its first good one after (driver health check every 1 s here, 10 s by default;
remount; the runtime re-binds the new mount into the container). Under the upstream
kubelet + containerd the container stays broken until it is restarted: no anchor to time.
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
    parser.add_argument("--kills", type=int, default=3, help="FUSE daemon kills under a pod")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: namespaces, mounts, FUSE")
        return 2
    from kubernetes import client, config

    from kubelet_py.devcluster import LocalCluster, ensure_binaries
    from tests.integration.csi.conftest import fuse_daemons_under
    from tests.integration.csi_kubelet.conftest import (
        DRIVER,
        csi_environment,
        make_claim,
        our_mounts,
    )

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
        "inline CSI": {"start": [], "stop": [], "unmounted": []},
    }
    outages: list[float] = []
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
            bucket = f"bench-inline-{secrets.token_hex(4)}"
            env.seaweed.client().create_bucket(Bucket=bucket)
            kinds = {
                "emptyDir": {"emptyDir": {}},
                "CSI PVC": {"persistentVolumeClaim": {"claimName": claim}},
                "inline CSI": {
                    "csi": {
                        "driver": DRIVER,
                        "volumeAttributes": {"bucket": bucket},
                        "nodePublishSecretRef": {"name": env.secret},
                    }
                },
            }
            for i in range(args.runs):
                order = list(kinds)[i % 3 :] + list(kinds)[: i % 3]
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
                    if kind != "emptyDir":
                        while our_mounts(node.root) and time.monotonic() - t0 < 120:
                            time.sleep(0.02)
                        times[kind]["unmounted"].append(time.monotonic() - t0)
                log(f"run {i + 1}/{args.runs} done")
            if args.kills:
                outages = _fuse_kills(env, node, claim, args.kills, fuse_daemons_under)
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
    if outages:
        shown = ", ".join(f"{o:.2f}" for o in outages)
        print(
            f"FUSE daemon killed under a running pod, {len(outages)} times: the container's"
            f" writes failed for {shown} s (median {median(outages):.2f} s), then worked"
            " again without a restart (upstream: broken until the container restarts)"
        )
    return 0


WRITER = (
    "while true; do if echo x > /data/t 2>/dev/null; then echo ok; else echo fail; fi;"
    " sleep 0.05; done"
)


def _fuse_kills(env: Any, node: Any, claim: str, kills: int, daemons: Any) -> list[float]:
    """Kill the FUSE daemon under a writing pod `kills` times; the outage each time."""
    import signal
    from datetime import datetime

    name = f"bkill-{secrets.token_hex(3)}"
    pod = _pod(name, node.name, {"persistentVolumeClaim": {"claimName": claim}})
    pod["spec"]["containers"][0]["command"] = ["sh", "-c", WRITER]
    env.core.create_namespaced_pod(env.namespace, pod)
    deadline = time.monotonic() + 120
    while env.core.read_namespaced_pod(name, env.namespace).status.phase != "Running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"pod {name} not Running after 120 s")
        time.sleep(0.05)

    def lines() -> list[tuple[float, str]]:
        out = []
        for line in node.agent.container_log(env.namespace, name, "c").splitlines():
            stamp, _, _, text = line.split(" ", 3)
            when = datetime.fromisoformat(stamp[:26] + stamp[-6:]).timestamp()
            out.append((when, text))
        return out

    outages = []
    for k in range(kills):
        time.sleep(2)
        seen = len(lines())
        (pid,) = daemons(node.root)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            got = lines()[seen:]
            fails = [t for t, text in got if text == "fail"]
            oks = [t for t, text in got if text == "ok" and fails and t > fails[0]]
            if oks:
                outages.append(oks[0] - fails[0])
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"kill {k + 1}: the pod did not write again in 120 s")
            time.sleep(0.1)
        log(f"FUSE kill {k + 1}/{kills}: outage {outages[-1]:.2f} s")
    env.core.delete_namespaced_pod(name, env.namespace, grace_period_seconds=1)
    return outages


if __name__ == "__main__":
    sys.exit(main())

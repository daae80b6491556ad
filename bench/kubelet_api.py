"""The kubelet API as a user feels it: `kubectl exec … true` round trips and `kubectl logs -f`
throughput, beside the runtime reached directly through its CRI socket.

Run as root from the repository root:

    python3 bench/kubelet_api.py [--execs 40] [--log-mib 32] [--log-rounds 3]

Set-up (all torn down at the end, also on an error or Ctrl-C): a `LocalCluster` and one
node `kpy` running our agent, started as bench/pod_startup.py starts it (its `OurNode`),
with two busybox pods: `sleeper` (sleep 3600) and `printer`, which on each trigger file
/tmp/go<i> writes --log-mib MiB of 64-byte lines to stdout (`yes | head -c`) and then a
line END<i>.

Measured, alternating the rows so load from other work on this shared VM falls on all:

- exec: `kubectl exec sleeper -- true` through the apiserver, once with kubectl's default
  WebSocket transport (the apiserver translates to SPDY toward the kubelet) and once with
  SPDY end to end; the anchors are the same command through the runtime's own socket:
  `crictl exec -s` (a CLI process, CRI ExecSync) and ExecSync from a gRPC client inside
  this process (no process start). Wall time per call, p50 / p99 (nearest rank).
- logs: `kubectl logs -f printer` started before the trigger; throughput = MiB written
  between the trigger and the END line reaching kubectl. The anchor is the CRI log file
  itself, read by this process as conmon writes it (what `crictl logs -f` reads): the
  rate the container produces. Both follow the same round, so the ratio is the cost of
  the API path (kubelet read + TLS + apiserver proxy + kubectl).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import (
    BUSYBOX_IMAGE,
    code_version,
    loadavg,
    log,
    median,
    percentile,
    prepare_images,
    terminate_as_interrupt,
    unmount_under,
)
from pod_startup import NAMESPACE, OurNode, wait_node_ready, wait_service_account

from kubelet_py.agent.criconfig import POD_NAME

LINE = "x" * 63  # `yes LINE` prints 64-byte lines


def kubectl_argv(cluster: Any, *args: str) -> list[str]:
    return [str(cluster.binaries.kubectl), f"--kubeconfig={cluster.admin_kubeconfig}", *args]


def pod(name: str, script: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeName": "kpy",
            "terminationGracePeriodSeconds": 1,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "main", "image": BUSYBOX_IMAGE,
                            "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script]}],
        },
    }  # fmt: skip


def wait_running(core: Any, name: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while core.read_namespaced_pod(name, NAMESPACE).status.phase != "Running":
        if time.monotonic() > deadline:
            raise RuntimeError(f"pod {name} not Running after {timeout_s} s")
        time.sleep(0.2)


def container_id(node: Any, pod_name: str) -> str:
    for c in node.cri.list_containers():
        if c.labels.get(POD_NAME) == pod_name and c.state == 1:  # CONTAINER_RUNNING
            return str(c.id)
    raise RuntimeError(f"no running container for pod {pod_name}")


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, timeout=60, env=env, check=False)
    took = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-6:])} failed: {out.stderr.decode()[-400:]}")
    return took


def bench_exec(
    cluster: Any, node: Any, sock: Path, crictl: Path, execs: int
) -> dict[str, list[float]]:
    cid = container_id(node, "sleeper")
    base = kubectl_argv(cluster, "exec", "-n", NAMESPACE, "sleeper", "--", "true")
    ws = {**os.environ, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "true"}
    spdy = {**os.environ, "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}
    crictl_argv = [str(crictl), "--runtime-endpoint", f"unix://{sock}", "exec", "-s", cid, "true"]
    pb = node.cri.pb
    rows: dict[str, list[float]] = {
        "kubectl exec (WebSocket)": [],
        "kubectl exec (SPDY)": [],
        "crictl exec -s (CRI ExecSync)": [],
        "CRI ExecSync, gRPC in-process": [],
    }

    def grpc_exec() -> float:
        t0 = time.perf_counter()
        resp = node.cri.rt.ExecSync(pb.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=10))
        took = time.perf_counter() - t0
        if resp.exit_code != 0:
            raise RuntimeError(f"ExecSync true exited {resp.exit_code}")
        return took

    timed(base, ws)  # one warm-up each
    timed(base, spdy)
    timed(crictl_argv)
    grpc_exec()
    for i in range(execs):
        log(f"  exec round {i + 1}/{execs}")
        rows["kubectl exec (WebSocket)"].append(timed(base, ws))
        rows["kubectl exec (SPDY)"].append(timed(base, spdy))
        rows["crictl exec -s (CRI ExecSync)"].append(timed(crictl_argv))
        rows["CRI ExecSync, gRPC in-process"].append(grpc_exec())
    return rows


def bench_logs(
    cluster: Any, ours: OurNode, node: Any, mib: int, rounds: int
) -> list[tuple[float, float]]:
    """(kubectl MiB/s, log file MiB/s) per round."""
    cid = container_id(node, "printer")
    log_dir = next((ours.root / "logs" / "pods").glob(f"{NAMESPACE}_printer_*")) / "main"
    out = []
    for i in range(rounds):
        log(f"  logs round {i + 1}/{rounds}")
        end = f"END{i}".encode()
        proc = subprocess.Popen(
            kubectl_argv(cluster, "logs", "-f", "--tail=0", "-n", NAMESPACE, "printer"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert proc.stdout is not None
        got = {"bytes": 0, "end": 0.0}

        def pump(stream: Any = proc.stdout, got: dict[str, Any] = got, end: bytes = end) -> None:
            tail = b""
            while chunk := stream.read1(1 << 16):
                got["bytes"] += len(chunk)
                tail = (tail + chunk)[-64:]
                if end in tail:
                    got["end"] = time.perf_counter()
                    return

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        time.sleep(1.0)  # kubectl connected and following
        files = sorted(log_dir.glob("*.log"))
        f = files[-1].open("rb")
        f.seek(0, os.SEEK_END)
        file_end = 0.0
        t0 = time.perf_counter()
        trigger = node.cri.pb.ExecSyncRequest(
            container_id=cid, cmd=["sh", "-c", f"touch /tmp/go{i}"], timeout=10
        )
        if (rc := node.cri.rt.ExecSync(trigger).exit_code) != 0:
            raise RuntimeError(f"round {i}: the trigger exec exited {rc}")
        tail = b""
        deadline = time.monotonic() + 300
        while not file_end and time.monotonic() < deadline:
            chunk = f.read(1 << 20)
            if not chunk:
                time.sleep(0.002)
                continue
            tail = (tail + chunk)[-128:]
            if end in tail:
                file_end = time.perf_counter()
        f.close()
        reader.join(timeout=300)
        proc.kill()
        proc.wait(timeout=10)
        if not file_end or not got["end"]:
            raise RuntimeError(
                f"round {i}: END not seen (file {bool(file_end)}, kubectl {got['bytes']} bytes)"
            )
        out.append((mib / (got["end"] - t0), mib / (file_end - t0)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--execs", type=int, default=40)
    parser.add_argument("--log-mib", type=int, default=32)
    parser.add_argument("--log-rounds", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("run as root: namespaces, mounts and cgroups")
        return 2
    from kubernetes import client, config

    from kubelet_py.devcluster import LocalCluster, ensure_binaries
    from kubelet_py.devcluster.build import ensure_go_tool

    binaries = ensure_binaries(progress=log)
    crictl = ensure_go_tool("crictl", progress=log)
    work = Path(tempfile.mkdtemp(prefix="bench-kapi-"))
    cluster = LocalCluster(
        binaries=binaries,
        work_dir=work / "cluster",
        prefix=f"bkapi-{secrets.token_hex(3)}",
        progress=lambda _m: None,
    )
    ours: OurNode | None = None
    problems: list[str] = []
    try:
        with terminate_as_interrupt():
            log("building images ...")
            images = prepare_images(work / "images")
            log("starting the control plane ...")
            cluster.start()
            api = config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))
            core = client.CoreV1Api(api)
            core.create_namespace({"metadata": {"name": NAMESPACE}})
            wait_service_account(core)
            ours = OurNode(cluster, work, images.layout)
            node = ours.start()
            log(f"node Ready after {wait_node_ready(core, node):.1f} s")
            lines = args.log_mib * 1024 * 1024 // 64
            printer = (
                f"i=0; while true; do while [ ! -e /tmp/go$i ]; do sleep 0.05; done; "
                f"yes {LINE} | head -n {lines}; echo END$i; i=$((i+1)); done"
            )
            # the test image links few busybox applets: give `true` its name
            core.create_namespaced_pod(
                NAMESPACE, pod("sleeper", "ln -s busybox /bin/true; exec sleep 3600")
            )
            core.create_namespaced_pod(NAMESPACE, pod("printer", printer))
            wait_running(core, "sleeper")
            wait_running(core, "printer")
            log("exec ...")
            execs = bench_exec(cluster, node, ours.root / "cri.sock", crictl, args.execs)
            log("logs -f ...")
            logs = bench_logs(cluster, ours, node, args.log_mib, args.log_rounds)
            report(args, execs, logs)
    except KeyboardInterrupt as err:
        print(f"\ninterrupted ({err}); cleaning up", file=sys.stderr)
        return 130
    finally:
        if ours is not None:
            problems += ours.stop()
        cluster.stop()
        left = unmount_under(work)
        if left:
            problems.append(f"mounts left under {work}: {left}")
        shutil.rmtree(work, ignore_errors=True)
    if problems:
        print("\nclean-up problems:")
        for p in problems:
            print(f"  {p}")
        return 1
    return 0


def report(args: Any, execs: dict[str, list[float]], logs: list[tuple[float, float]]) -> None:
    print()
    print(f"kubelet API (code {code_version()}, load {loadavg()})")
    print()
    print(f"| exec `true`, {args.execs} calls each | p50 ms | p99 ms |")
    print("| --- | --- | --- |")
    for label, values in execs.items():
        ms = [v * 1000 for v in values]
        print(f"| {label} | {percentile(ms, 50):.1f} | {percentile(ms, 99):.1f} |")
    print()
    print(f"| logs -f, {args.log_mib} MiB x {args.log_rounds} rounds | median MiB/s | rounds |")
    print("| --- | --- | --- |")
    api = [a for a, _ in logs]
    direct = [b for _, b in logs]
    print(f"| kubectl logs -f (apiserver -> kubelet API) | {median(api):.1f} | "
          f"{', '.join(f'{x:.1f}' for x in api)} |")  # fmt: skip
    print(f"| CRI log file as conmon writes it (anchor) | {median(direct):.1f} | "
          f"{', '.join(f'{x:.1f}' for x in direct)} |")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())

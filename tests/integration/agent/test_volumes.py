"""emptyDir media and limits, and fsGroup, against the real cluster: a Memory emptyDir is a
tmpfs of its sizeLimit (writing past it fails with ENOSPC in the container), a disk emptyDir
over its sizeLimit gets the pod evicted, and fsGroup sets volume ownership (setgid) and the
container's groups, with fsGroupChangePolicy OnRootMismatch honoured on a remount."""

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from kubelet_py.devcluster import LocalCluster
from tests.integration.agent.conftest import (
    IMAGE,
    AgentNode,
    fresh_namespace,
    start_agent,
    wait_for,
)


@pytest.fixture
def ns(admin_api: client.ApiClient) -> Iterator[str]:
    with fresh_namespace(admin_api, "v") as name:
        yield name


def _pod(
    name: str,
    script: str,
    volumes: list[client.V1Volume],
    *,
    security: client.V1PodSecurityContext | None = None,
    restart: str = "Always",
) -> client.V1Pod:
    mounts = [client.V1VolumeMount(name=v.name, mount_path=f"/{v.name}") for v in volumes]
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name),
        spec=client.V1PodSpec(
            node_name="agent1", termination_grace_period_seconds=1, restart_policy=restart,
            volumes=volumes, security_context=security,
            containers=[client.V1Container(
                name="main", image=IMAGE, image_pull_policy="IfNotPresent",
                command=["sh", "-c", script], volume_mounts=mounts,
            )],
        ),
    )  # fmt: skip


def _log(node: AgentNode, ns: str, pod: str) -> str:
    lines = []
    for line in node.container_log(ns, pod, "main").splitlines():
        parts = line.split(" ", 3)
        lines.append(parts[3] if len(parts) == 4 else "")
    return "\n".join(lines)


def _volume_dir(node: AgentNode, core: client.CoreV1Api, ns: str, pod: str, vol: str) -> Path:
    uid = core.read_namespaced_pod(pod, ns).metadata.uid
    return node.root / "pods" / uid / "volumes" / "emptyDir" / vol


def test_memory_empty_dir_is_a_tmpfs_of_its_size_limit(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """medium Memory + sizeLimit 2Mi: a 2 MiB tmpfs; writing 3 MiB fails with ENOSPC inside."""
    core = client.CoreV1Api(admin_api)
    vol = client.V1Volume(name="mem", empty_dir=client.V1EmptyDirVolumeSource(
        medium="Memory", size_limit="2Mi"))  # fmt: skip
    script = (
        "busybox grep ' /mem ' /proc/mounts; "
        "busybox dd if=/dev/zero of=/mem/big bs=1024 count=3072 2>&1; echo dd-exit=$?; "
        "sleep 3600"
    )
    core.create_namespaced_pod(ns, _pod("mem", script, [vol]))
    wait_for("its output", lambda: "dd-exit=" in _log(agent_node, ns, "mem"), 60, agent_node)
    out = _log(agent_node, ns, "mem")
    assert "tmpfs /mem tmpfs" in out and "size=2048k" in out, out
    assert "No space left on device" in out and "dd-exit=1" in out, out
    host_dir = _volume_dir(agent_node, core, ns, "mem", "mem")
    assert host_dir.is_mount()
    core.delete_namespaced_pod("mem", ns, grace_period_seconds=1)
    wait_for("the tmpfs to be unmounted", lambda: not host_dir.is_mount(), 60, agent_node)


def test_disk_empty_dir_over_its_size_limit_evicts_the_pod(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """A disk-backed emptyDir with sizeLimit 1Mi filled with 3 MiB: the pod is evicted (Failed,
    reason Evicted, upstream's message, an Evicted event) and is not started again."""
    core = client.CoreV1Api(admin_api)
    vol = client.V1Volume(name="scratch", empty_dir=client.V1EmptyDirVolumeSource(size_limit="1Mi"))
    script = "busybox dd if=/dev/zero of=/scratch/big bs=1024 count=3072; sleep 3600"
    core.create_namespaced_pod(ns, _pod("filler", script, [vol]))

    def evicted() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("filler", ns)
        return pod if pod.status.reason == "Evicted" else None

    pod = wait_for("the eviction", evicted, 60, agent_node)
    assert pod.status.phase == "Failed"
    assert pod.status.message == 'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi". '
    events = [
        (e.reason, e.message)
        for e in core.list_namespaced_event(ns).items
        if e.involved_object.name == "filler"
    ]
    assert ("Evicted", pod.status.message) in events
    time.sleep(3)  # it stays evicted: no new sandbox, no container running again
    again = core.read_namespaced_pod("filler", ns)
    assert again.status.phase == "Failed" and not any(
        s.state.running for s in again.status.container_statuses or []
    )
    # deleting the evicted pod removes it for good
    core.delete_namespaced_pod("filler", ns)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("filler", ns)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for("the evicted pod to be deleted", gone, 30, agent_node)


def test_fs_group_owns_volumes_and_joins_the_container_groups(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str
) -> None:
    """fsGroup 2000: the emptyDir and configMap volumes belong to group 2000 with the setgid
    bit, the non-root container's groups include 2000, and files it makes inherit the group."""
    core = client.CoreV1Api(admin_api)
    core.create_namespaced_config_map(
        ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="conf"), data={"k": "v"})
    )
    volumes = [
        client.V1Volume(name="data", empty_dir={}),
        client.V1Volume(name="conf", config_map=client.V1ConfigMapVolumeSource(name="conf")),
    ]
    script = (
        "echo groups=$(id -G); busybox stat -c 'data=%a:%g' /data; "
        "busybox stat -L -c 'conf=%g' /conf/k; echo hi > /data/new; "
        "busybox stat -c 'new=%u:%g' /data/new; sleep 3600"
    )
    security = client.V1PodSecurityContext(run_as_user=1000, run_as_group=1000, fs_group=2000)
    core.create_namespaced_pod(ns, _pod("owned", script, volumes, security=security))
    wait_for("its output", lambda: "new=" in _log(agent_node, ns, "owned"), 60, agent_node)
    out = _log(agent_node, ns, "owned")
    groups = out.split("groups=", 1)[1].split("\n", 1)[0].split()
    assert "2000" in groups and "1000" in groups, out
    assert "data=2777:2000" in out, out  # setgid + rwx for all (emptyDir is 0777)
    assert "conf=2000" in out and "new=1000:2000" in out, out


def test_fs_group_change_policy_on_root_mismatch(
    agent_node: AgentNode, admin_api: client.ApiClient, ns: str, cluster: LocalCluster
) -> None:
    """On a remount (the agent restarted), fsGroupChangePolicy Always re-owns every file while
    OnRootMismatch leaves the tree alone when the volume root is already right."""
    core = client.CoreV1Api(admin_api)
    script = (
        "busybox mkdir /data/sub; echo x > /data/sub/f; busybox chgrp -R 0 /data/sub; "
        "echo done; sleep 3600"
    )
    for name, policy in (("own-always", "Always"), ("own-root", "OnRootMismatch")):
        security = client.V1PodSecurityContext(fs_group=3000, fs_group_change_policy=policy)
        vol = client.V1Volume(name="data", empty_dir={})
        core.create_namespaced_pod(ns, _pod(name, script, [vol], security=security))
    for name in ("own-always", "own-root"):
        wait_for(f"{name} to be ready", lambda n=name: "done" in _log(agent_node, ns, n), 60,
                 agent_node)  # fmt: skip
    files = {
        n: _volume_dir(agent_node, core, ns, n, "data") / "sub" / "f"
        for n in ("own-always", "own-root")
    }
    assert {n: f.stat().st_gid for n, f in files.items()} == {"own-always": 0, "own-root": 0}
    os.kill(agent_node.proc.pid, signal.SIGKILL)
    agent_node.proc.wait()
    agent_node.proc = start_agent(
        cluster, agent_node.lab, agent_node.root, agent_node.static_dir, agent_node.log_path
    )
    wait_for(
        "the restarted agent to re-own the Always volume",
        lambda: files["own-always"].stat().st_gid == 3000,
        60,
        agent_node,
    )
    assert files["own-root"].stat().st_gid == 0
    root_dir = files["own-root"].parent.parent
    assert root_dir.stat().st_gid == 3000 and root_dir.stat().st_mode & 0o2000

"""The kubelet side of CSI end to end: registration, CSINode, PVC volumes across nodes,
shared volumes, mount failures as events, and an agent kill -9 under a mounted pod."""

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.integration.agent.conftest import wait_for
from tests.integration.csi.conftest import fuse_daemons_under
from tests.integration.csi_kubelet.conftest import (
    DRIVER,
    CsiEnv,
    _ready,
    delete_pod,
    make_claim,
    our_mounts,
    pod_phase,
    run_pod,
    wait_phase,
)


def _csi_mounts(env: CsiEnv, node_index: int) -> list[tuple[str, str]]:
    root = env.nodes[node_index].root
    return [m for m in our_mounts(root) if "/plugins/kubernetes.io/csi/" in m[0] or "~csi" in m[0]]


def _stagings(mounts: list[tuple[str, str]]) -> list[str]:
    return [p for p, _ in mounts if p.endswith("/globalmount")]


def _targets(mounts: list[tuple[str, str]]) -> list[str]:
    return [p for p, _ in mounts if "/volumes/kubernetes.io~csi/" in p]


def test_csinode_lists_the_registered_driver(csi_env: CsiEnv) -> None:
    """Each node's CSINode names the driver with its NodeGetInfo node id; the Node is annotated."""
    storage = client.StorageV1Api(csi_env.api)
    for node in csi_env.nodes:
        csinode = wait_for(
            f"CSINode {node.name} to list {DRIVER}",
            lambda n=node: _driver_entry(storage, n.name),
            30,
            node.agent,
        )
        assert csinode["nodeID"] == node.name
        owner = (_csinode(storage, node.name) or {})["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"]) == ("Node", node.name)
        ann = csi_env.core.read_node(node.name).metadata.annotations
        assert json.loads(ann["csi.volume.kubernetes.io/nodeid"]) == {DRIVER: node.name}
        assert "registered with the kubelet" in node.driver.log_path.read_text()


def _csinode(storage: client.StorageV1Api, node: str) -> dict[str, Any] | None:
    """CSINode as JSON (the Python client cannot parse one whose drivers are null)."""
    try:
        resp = storage.read_csi_node(node, _preload_content=False)
    except client.ApiException:
        return None
    doc: dict[str, Any] = json.loads(resp.data)
    return doc


def _driver_entry(storage: client.StorageV1Api, node: str) -> dict[str, Any] | None:
    doc = _csinode(storage, node)
    drivers = ((doc or {}).get("spec") or {}).get("drivers") or []
    return next((d for d in drivers if d.get("name") == DRIVER), None)


def test_volume_written_on_one_node_is_read_on_the_other(csi_env: CsiEnv) -> None:
    """PVC → PV → pod on A writes a file → deleted (unpublished, unstaged) → pod on B reads it."""
    a, b = csi_env.nodes
    claim = make_claim(csi_env)
    token = uuid.uuid4().hex
    writer = run_pod(csi_env, a, f"echo {token} > /data/hello.txt && sync", claim)
    assert wait_phase(csi_env, a, writer, {"Succeeded", "Failed"}) == "Succeeded", (
        a.agent.log_tail()
    )
    # a finished pod gives its volume back (unpublish, unstage) before it is even deleted
    wait_for("node A's CSI mounts to go", lambda: not _csi_mounts(csi_env, 0), 30, a.agent)
    wait_for("node A's FUSE daemon to exit", lambda: not fuse_daemons_under(a.root), 30, a.agent)
    assert "NodeUnstageVolume" in a.agent.log_path.read_text()
    delete_pod(csi_env, a, writer)
    reader = run_pod(csi_env, b, "cat /data/hello.txt", claim)
    assert wait_phase(csi_env, b, reader, {"Succeeded", "Failed"}) == "Succeeded", (
        b.agent.log_tail()
    )
    assert token in b.agent.container_log(csi_env.namespace, reader, "c")
    delete_pod(csi_env, b, reader)
    wait_for("node B's CSI mounts to go", lambda: not _csi_mounts(csi_env, 1), 30, b.agent)


def test_two_pods_share_a_read_write_many_volume(csi_env: CsiEnv) -> None:
    """Two pods on one node: one stage, two publishes; each sees the other's file."""
    a = csi_env.nodes[0]
    claim = make_claim(csi_env)
    wait_loop = "until [ -f /data/{f} ]; do sleep 0.3; done; cat /data/{f}; sleep 3600"
    p1 = run_pod(csi_env, a, "echo one > /data/one; " + wait_loop.format(f="two"), claim)
    p2 = run_pod(csi_env, a, "echo two > /data/two; " + wait_loop.format(f="one"), claim)
    for p, other in ((p1, "two"), (p2, "one")):
        wait_for(
            f"{p} to read the other pod's file",
            lambda p=p, other=other: other in a.agent.container_log(csi_env.namespace, p, "c"),
            90,
            a.agent,
        )
    mounts = _csi_mounts(csi_env, 0)
    assert len(_stagings(mounts)) == 1, mounts
    assert len(_targets(mounts)) == 2, mounts
    delete_pod(csi_env, a, p1)
    mounts = _csi_mounts(csi_env, 0)
    assert len(_stagings(mounts)) == 1 and len(_targets(mounts)) == 1, mounts
    delete_pod(csi_env, a, p2)
    wait_for("the last use to unstage", lambda: not _csi_mounts(csi_env, 0), 30, a.agent)


def test_wrong_credentials_are_a_failed_mount_event(csi_env: CsiEnv) -> None:
    """Wrong stage-secret key: FailedMount with S3's error, no container; fixed → a retry runs."""
    a = csi_env.nodes[0]
    core = csi_env.core
    bad = f"bad-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_secret(
        csi_env.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=bad),
            string_data=csi_env.seaweed.secrets(secret_key="not-the-key"),
        ),
    )
    good_claim = make_claim(csi_env)
    good_pv = core.read_persistent_volume(
        core.read_namespaced_persistent_volume_claim(good_claim, csi_env.namespace).spec.volume_name
    )
    pv_name = f"{csi_env.namespace}-badpv"
    claim = f"bad-{uuid.uuid4().hex[:6]}"
    core.create_persistent_volume(
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name},
            "spec": {
                "capacity": {"storage": "1Gi"},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": "",
                "claimRef": {"namespace": csi_env.namespace, "name": claim},
                "csi": {
                    "driver": DRIVER,
                    "volumeHandle": good_pv.spec.csi.volume_handle,
                    "nodeStageSecretRef": {"name": bad, "namespace": csi_env.namespace},
                },
            },
        }
    )
    core.create_namespaced_persistent_volume_claim(
        csi_env.namespace,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv_name,
                "resources": {"requests": {"storage": "1Gi"}},
            },
        },
    )
    wait_for(
        f"PVC {claim} to bind",
        lambda: (
            core.read_namespaced_persistent_volume_claim(claim, csi_env.namespace).status.phase
            == "Bound"
        ),
        60,
    )
    pod = run_pod(csi_env, a, "echo should-not-run", claim)  # ...until the secret is fixed

    def failed_mounts() -> list[client.CoreV1Event]:
        events = core.list_namespaced_event(
            csi_env.namespace, field_selector=f"involvedObject.name={pod}"
        ).items
        return [e for e in events if e.reason == "FailedMount"]

    events = wait_for(f"a FailedMount event on {pod}", failed_mounts, 60, a.agent)
    message = events[0].message
    assert events[0].type == "Warning"
    assert "SignatureDoesNotMatch" in message, message
    assert "MountVolume.MountDevice failed" in message, message
    assert "code = Unauthenticated" in message, message
    status = core.read_namespaced_pod(pod, csi_env.namespace).status
    assert status.phase == "Pending"
    assert status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    assert not a.agent.container_log(csi_env.namespace, pod, "c")
    assert not _csi_mounts(csi_env, 0)
    # the secret fixed: a later retry mounts and the pod runs
    core.replace_namespaced_secret(
        bad,
        csi_env.namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=bad), string_data=csi_env.seaweed.secrets()
        ),
    )
    assert wait_phase(csi_env, a, pod, {"Succeeded", "Failed"}, 120) == "Succeeded"
    assert "should-not-run" in a.agent.container_log(csi_env.namespace, pod, "c")
    delete_pod(csi_env, a, pod)
    wait_for("the mounts to go", lambda: not _csi_mounts(csi_env, 0), 30, a.agent)


def test_agent_kill9_keeps_the_pod_and_its_mount(csi_env: CsiEnv) -> None:
    """kill -9 of the agent under a pod with a CSI volume: restart, no second mount, then clean
    teardown (unpublish + unstage) when the pod is deleted."""
    a = csi_env.nodes[0]
    claim = make_claim(csi_env)
    pod = run_pod(
        csi_env,
        a,
        "echo alive > /data/alive; while true; do sleep 1; done",
        claim,
        restart="Always",
    )
    wait_phase(csi_env, a, pod, {"Running"})
    wait_for(
        "the pod's file in S3",
        lambda: any(
            o["Key"] == "alive"
            for b in csi_env.seaweed.client().list_buckets()["Buckets"]
            for o in csi_env.seaweed.client().list_objects_v2(Bucket=b["Name"]).get("Contents", [])
        ),
        30,
    )
    before = sorted(_csi_mounts(csi_env, 0))
    assert len(_stagings(before)) == 1 and len(_targets(before)) == 1, before
    os.kill(a.agent.proc.pid, signal.SIGKILL)
    a.agent.proc.wait(timeout=10)
    a.restart_agent(csi_env.cluster)
    wait_for("node A Ready again", lambda: _ready(csi_env.core, a.name), 90, a.agent)
    wait_for(
        "the agent to register the driver again",
        lambda: a.agent.log_path.read_text().count(f"CSI driver {DRIVER} registered") >= 2,
        30,
        a.agent,
    )
    assert pod_phase(csi_env, pod) == "Running"
    after = sorted(_csi_mounts(csi_env, 0))
    assert after == before, (after, a.agent.log_tail(), a.driver.log_path.read_text()[-3000:])
    status = csi_env.core.read_namespaced_pod(pod, csi_env.namespace).status
    assert status.container_statuses[0].restart_count == 0
    delete_pod(csi_env, a, pod)
    wait_for("unpublish and unstage after the restart", lambda: not _csi_mounts(csi_env, 0), 30)
    wait_for("the FUSE daemon to exit", lambda: not fuse_daemons_under(a.root), 30)


@contextlib.contextmanager
def _csidriver_modes(env: CsiEnv, modes: list[str]) -> Iterator[None]:
    """The CSIDriver object recreated with other volumeLifecycleModes (immutable), then back."""
    storage = client.StorageV1Api(env.api)
    spec = storage.read_csi_driver(DRIVER).spec

    def recreate(lifecycle: list[str]) -> None:
        storage.delete_csi_driver(DRIVER)
        wait_for("the CSIDriver to go", lambda: DRIVER not in _csidriver_names(storage), 30)
        spec.volume_lifecycle_modes = lifecycle
        storage.create_csi_driver(
            client.V1CSIDriver(metadata=client.V1ObjectMeta(name=DRIVER), spec=spec)
        )

    original = list(spec.volume_lifecycle_modes)
    recreate(modes)
    try:
        yield
    finally:
        recreate(original)


def _csidriver_names(storage: client.StorageV1Api) -> list[str]:
    return [d.metadata.name for d in storage.list_csi_driver().items]


def test_inline_volume_of_a_persistent_only_driver_is_refused(csi_env: CsiEnv) -> None:
    """An inline `csi` volume whose CSIDriver lacks the Ephemeral mode: FailedMount, no start."""
    with _csidriver_modes(csi_env, ["Persistent"]):
        _inline_volume_refused(csi_env)


def _inline_volume_refused(csi_env: CsiEnv) -> None:
    a = csi_env.nodes[0]
    name = f"inline-{uuid.uuid4().hex[:6]}"
    csi_env.core.create_namespaced_pod(
        csi_env.namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {
                "nodeName": a.name,
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "c",
                        "image": "example.com/test/busybox:1",
                        "command": ["true"],
                        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                    }
                ],
                "volumes": [{"name": "scratch", "csi": {"driver": DRIVER}}],
            },
        },
    )

    def failed() -> list[str]:
        events = csi_env.core.list_namespaced_event(
            csi_env.namespace, field_selector=f"involvedObject.name={name}"
        ).items
        return [str(e.message) for e in events if e.reason == "FailedMount"]

    messages = wait_for(f"FailedMount on {name}", failed, 60, a.agent)
    assert "does not support inline ephemeral volumes" in messages[0], messages
    assert pod_phase(csi_env, name) == "Pending"
    delete_pod(csi_env, a, name)


def test_driver_socket_removed_unregisters_and_comes_back(csi_env: CsiEnv) -> None:
    """Driver stopped (registration socket removed) → gone from CSINode; started → back."""
    b = csi_env.nodes[1]
    storage = client.StorageV1Api(csi_env.api)
    assert b.driver.proc is not None
    b.driver.proc.send_signal(signal.SIGINT)  # a graceful stop removes its sockets
    b.driver.proc.wait(timeout=20)
    if b.driver.client is not None:
        b.driver.client.close()
        b.driver.client = None
    wait_for(
        f"{DRIVER} to leave CSINode {b.name}",
        lambda: _driver_entry(storage, b.name) is None,
        30,
        b.agent,
    )
    ann = csi_env.core.read_node(b.name).metadata.annotations or {}
    assert "csi.volume.kubernetes.io/nodeid" not in ann
    b.driver.start()
    wait_for(
        f"{DRIVER} back in CSINode {b.name}",
        lambda: _driver_entry(storage, b.name) is not None,
        30,
        b.agent,
    )


def test_pod_deleted_while_the_agent_is_down_is_unmounted_on_restart(csi_env: CsiEnv) -> None:
    """Agent killed, its pod force-deleted meanwhile: the restarted agent unpublishes and
    unstages from its records alone, and the FUSE daemon exits."""
    a = csi_env.nodes[0]
    claim = make_claim(csi_env)
    pod = run_pod(csi_env, a, "while true; do sleep 1; done", claim, restart="Always")
    wait_phase(csi_env, a, pod, {"Running"})
    assert len(_targets(_csi_mounts(csi_env, 0))) == 1
    os.kill(a.agent.proc.pid, signal.SIGKILL)
    a.agent.proc.wait(timeout=10)
    csi_env.core.delete_namespaced_pod(pod, csi_env.namespace, grace_period_seconds=0)
    wait_phase(csi_env, a, pod, {"Gone"}, 30)
    assert len(_targets(_csi_mounts(csi_env, 0))) == 1  # nobody has unmounted it yet
    a.restart_agent(csi_env.cluster)
    wait_for("the orphan's unpublish and unstage", lambda: not _csi_mounts(csi_env, 0), 60, a.agent)
    wait_for("the FUSE daemon to exit", lambda: not fuse_daemons_under(a.root), 30, a.agent)
    wait_for("node A Ready again", lambda: _ready(csi_env.core, a.name), 60, a.agent)


def test_driver_kill9_and_restart_under_a_pod(csi_env: CsiEnv) -> None:
    """The node's driver killed and restarted under a mounted pod: the agent registers the new
    one, the pod keeps its data, and deleting the pod unpublishes/unstages through it."""
    b = csi_env.nodes[1]
    claim = make_claim(csi_env)
    pod = run_pod(
        csi_env,
        b,
        "echo before > /data/before; while true; do sleep 1; done",
        claim,
        restart="Always",
    )
    wait_phase(csi_env, b, pod, {"Running"})
    registered = b.agent.log_path.read_text().count(f"CSI driver {DRIVER} registered")
    b.driver.kill()  # SIGKILL: its registration socket stays behind, stale
    b.driver.start()
    wait_for(
        "the agent to register the restarted driver",
        lambda: b.agent.log_path.read_text().count(f"CSI driver {DRIVER} registered") > registered,
        30,
        b.agent,
    )
    assert pod_phase(csi_env, pod) == "Running"
    [target] = _targets(_csi_mounts(csi_env, 1))
    assert (Path(target) / "before").read_text() == "before\n"
    delete_pod(csi_env, b, pod)
    wait_for("unpublish and unstage", lambda: not _csi_mounts(csi_env, 1), 30, b.agent)
    wait_for("the FUSE daemon to exit", lambda: not fuse_daemons_under(b.root), 30, b.agent)


def _events(env: CsiEnv, pod: str, reason: str) -> list[client.CoreV1Event]:
    events = env.core.list_namespaced_event(
        env.namespace, field_selector=f"involvedObject.name={pod}"
    ).items
    return [e for e in events if e.reason == reason]


def test_inline_ephemeral_volume_in_a_pod(csi_env: CsiEnv) -> None:
    """An inline `csi` volume (an existing bucket and prefix, credentials from a Secret in the
    pod's namespace): the pod writes, the data is in the bucket, the mount goes with the pod."""
    a = csi_env.nodes[0]
    bucket = f"inline-{uuid.uuid4().hex[:8]}"
    csi_env.seaweed.client().create_bucket(Bucket=bucket)
    source = {
        "csi": {
            "driver": DRIVER,
            "volumeAttributes": {"bucket": bucket, "prefix": "scratch"},
            "nodePublishSecretRef": {"name": csi_env.secret},
        }
    }
    script = "echo inline > /data/hello.txt && cat /data/hello.txt && sleep 60"
    pod = run_pod(csi_env, a, script, "", volume_source=source)
    wait_phase(csi_env, a, pod, {"Running"})
    wait_for(
        "the pod's write",
        lambda: "inline" in a.agent.container_log(csi_env.namespace, pod, "c"),
        60,
        a.agent,
    )
    got = csi_env.seaweed.client().get_object(Bucket=bucket, Key="scratch/hello.txt")
    assert got["Body"].read() == b"inline\n"
    mounts = _csi_mounts(csi_env, 0)
    assert len(_targets(mounts)) == 1 and not _stagings(mounts), mounts  # no NodeStage
    delete_pod(csi_env, a, pod)
    wait_for("the inline volume's mounts to go", lambda: not _csi_mounts(csi_env, 0), 30, a.agent)
    wait_for("its FUSE daemon to exit", lambda: not fuse_daemons_under(a.root), 30)
    # a missing bucket: FailedMount with the S3 error, nothing mounted
    source["csi"]["volumeAttributes"] = {"bucket": f"{bucket}-missing"}
    bad = run_pod(csi_env, a, "true", "", volume_source=source)
    events = wait_for(f"FailedMount on {bad}", lambda: _events(csi_env, bad, "FailedMount"), 60)
    assert "NoSuchBucket" in events[0].message, events[0].message
    assert pod_phase(csi_env, bad) == "Pending"
    delete_pod(csi_env, a, bad)
    assert not fuse_daemons_under(a.root)


def test_fs_group_is_applied_by_the_driver(csi_env: CsiEnv) -> None:
    """runAsUser 1000 + fsGroup 2000 on an S3 PVC: the driver (VOLUME_MOUNT_GROUP) mounts for
    group 2000, so the non-root pod writes and its files are group 2000; a second pod with
    another fsGroup on the same node gets a FailedMount that says why."""
    a = csi_env.nodes[0]
    assert "volume mount group True" in a.agent.log_path.read_text()
    claim = make_claim(csi_env)
    script = "id -u; touch /data/mine && ls -n /data/mine; sleep 30"
    security = {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}
    pod = run_pod(csi_env, a, script, claim, security_context=security)
    wait_phase(csi_env, a, pod, {"Running"})

    def listing() -> str:
        text = a.agent.container_log(csi_env.namespace, pod, "c")
        return text if "mine" in text else ""

    log = wait_for("the pod's ls", listing, 60, a.agent)
    # CRI log lines: "<time> stdout F <text>"
    uid_line, ls_line = [line.split(" ", 3)[3] for line in log.splitlines()[:2]]
    assert uid_line == "1000"
    assert ls_line.split()[2:4] == ["1000", "2000"], ls_line
    other = run_pod(csi_env, a, "true", claim, security_context={"fsGroup": 3000})
    events = wait_for(f"FailedMount on {other}", lambda: _events(csi_env, other, "FailedMount"), 60)
    assert "need the same fsGroup" in events[0].message, events[0].message
    delete_pod(csi_env, a, other)
    delete_pod(csi_env, a, pod)
    wait_for("the mounts to go", lambda: not _csi_mounts(csi_env, 0), 30, a.agent)


def test_dead_fuse_mount_is_remounted_with_events_on_the_pod(csi_env: CsiEnv) -> None:
    """The FUSE daemon under a running pod killed: the driver finds the mount dead, remounts
    it and says so in Events on the pod; the runtime re-binds the new mount into the running
    container, whose writes fail for a moment and then work again, without a restart."""
    b = csi_env.nodes[1]
    claim = make_claim(csi_env)
    script = (
        "i=0; while true; do i=$((i+1));"
        " if echo $i > /data/tick 2>/dev/null; then echo ok $i; else echo fail $i; fi;"
        " sleep 0.5; done"
    )
    pod = run_pod(csi_env, b, script, claim, restart="Always")
    wait_phase(csi_env, b, pod, {"Running"})

    def lines() -> list[str]:
        log = b.agent.container_log(csi_env.namespace, pod, "c")
        return [line.split(" ", 3)[3] for line in log.splitlines()]

    wait_for("the pod's first write", lambda: "ok 1" in lines(), 30, b.agent)
    daemons = fuse_daemons_under(b.root)
    assert len(daemons) == 1, daemons
    os.kill(daemons[0], signal.SIGKILL)
    remounted = wait_for(
        f"a VolumeRemounted event on {pod}",
        lambda: _events(csi_env, pod, "VolumeRemounted"),
        60,
        b.agent,
    )
    dead = _events(csi_env, pod, "VolumeMountDead")
    assert dead and dead[0].type == "Warning", dead
    assert "Transport endpoint is not connected" in dead[0].message, dead[0].message
    assert remounted[0].source.component == DRIVER and remounted[0].source.host == b.name
    new = fuse_daemons_under(b.root)
    assert len(new) == 1 and new != daemons

    # the runtime re-binds the new mount into the running container, which writes again
    wait_for(
        "the runtime to re-bind the volume into the container",
        lambda: "was mounted again; re-bound at /data" in b.agent.log_path.read_text(),
        30,
        b.agent,
    )
    seen = len(lines())
    wait_for(
        "a write of the running container after the re-bind",
        lambda: any(line.startswith("ok") for line in lines()[seen:]),
        30,
        b.agent,
    )
    status = csi_env.core.read_namespaced_pod(pod, csi_env.namespace).status
    assert status.container_statuses[0].restart_count == 0
    tick = wait_for(
        "the pod's latest write in S3",
        lambda: _read_object(csi_env, "tick"),
        30,
    )
    assert tick.strip().isdigit()
    # and a new pod on the node reads the volume too
    stamp = str(time.time_ns())
    reader = run_pod(csi_env, b, f"echo {stamp} > /data/after && cat /data/after", claim)
    assert wait_phase(csi_env, b, reader, {"Succeeded", "Failed"}) == "Succeeded"
    assert stamp in b.agent.container_log(csi_env.namespace, reader, "c")
    delete_pod(csi_env, b, reader)
    delete_pod(csi_env, b, pod)
    wait_for("the mounts to go", lambda: not _csi_mounts(csi_env, 1), 30, b.agent)


def _read_object(env: CsiEnv, key: str) -> str:
    s3 = env.seaweed.client()
    for bucket in s3.list_buckets()["Buckets"]:
        for obj in s3.list_objects_v2(Bucket=bucket["Name"]).get("Contents", []):
            if obj["Key"] == key:
                body: bytes = s3.get_object(Bucket=bucket["Name"], Key=key)["Body"].read()
                return body.decode()
    return ""

"""PID namespaces per CRI NamespaceMode: POD (shared, held by the pod init), CONTAINER, NODE."""

import json
import os
from pathlib import Path

from tests.integration.runtime.conftest import CRI

POD, CONTAINER, NODE = 0, 1, 2


def _pod(cri: CRI, name: str, pid_mode: int) -> tuple[str, Path]:
    linux = {"security_context": {"namespace_options": {"pid": pid_mode}}}
    cfg = cri.pod_config(name, linux=linux)
    return cri.crictl("runp", str(cfg)).strip(), cfg


def _container(
    cri: CRI, pod_id: str, pod_cfg: Path, name: str, cmd: list[str], pid_mode: int
) -> str:
    linux = {"security_context": {"namespace_options": {"pid": pid_mode}}}
    ctr_cfg = cri.container_config(name, cmd, linux=linux)
    cid = cri.crictl("create", pod_id, str(ctr_cfg), str(pod_cfg)).strip()
    cri.crictl("start", cid)
    cri.wait_state(cid, "CONTAINER_RUNNING")
    return cid


def _ps(cri: CRI, cid: str) -> list[tuple[str, str]]:
    out = cri.crictl("exec", "--sync", cid, "busybox", "ps", "-o", "pid,args")
    rows = [line.split(None, 1) for line in out.splitlines()[1:] if line.strip()]
    return [(row[0], row[1] if len(row) > 1 else "") for row in rows]


def _record(cri: CRI, pod_id: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(
        (cri.root / "runtime" / "sandboxes" / pod_id / "sandbox.json").read_text()
    )
    return doc


def test_pod_shared_pid_namespace(cri: CRI) -> None:
    """shareProcessNamespace: each container sees the other's processes; PID 1 is the pod init."""
    pod_id, pod_cfg = _pod(cri, "shared", POD)
    _container(cri, pod_id, pod_cfg, "a", ["sleep", "1234"], POD)
    b = _container(cri, pod_id, pod_cfg, "b", ["sleep", "3600"], POD)
    ps = _ps(cri, b)
    assert any(pid == "1" and "pod-init" in args for pid, args in ps), ps
    assert any(args == "sleep 1234" for _, args in ps), ps  # container a, seen from b
    init = int(str(_record(cri, pod_id)["pid_init"]))
    status = Path(f"/proc/{init}/status").read_text()
    rss_kib = int(status.split("VmRSS:")[1].split()[0])
    assert rss_kib <= 64, status  # a static page of code and a stack, no libc
    cri.crictl("stopp", pod_id)
    assert not Path(f"/proc/{init}").exists() or "State:\tZ" in Path(
        f"/proc/{init}/status"
    ).read_text(errors="replace")
    cri.crictl("rmp", pod_id)
    assert not (cri.root / "runtime" / "sandboxes" / pod_id).exists()


def test_container_pid_namespace_is_private(cri: CRI) -> None:
    """NamespaceMode CONTAINER: a container sees only its own processes, even beside another."""
    pod_id, pod_cfg = _pod(cri, "private", CONTAINER)
    _container(cri, pod_id, pod_cfg, "a", ["sleep", "1234"], CONTAINER)
    b = _container(cri, pod_id, pod_cfg, "b", ["sleep", "3600"], CONTAINER)
    ps = _ps(cri, b)
    assert ps[0] == ("1", "sleep 3600"), ps
    assert not any("1234" in args for _, args in ps), ps
    assert _record(cri, pod_id)["pid_init"] == 0  # no init for a pod that does not share


def test_host_pid_namespace(cri: CRI) -> None:
    """hostPID (NamespaceMode NODE): the container sees the host's processes, this test's too."""
    pod_id, pod_cfg = _pod(cri, "hostpid", NODE)
    cid = _container(cri, pod_id, pod_cfg, "a", ["sleep", "3600"], NODE)
    ps = _ps(cri, cid)
    assert any(pid == str(os.getpid()) for pid, _ in ps), ps[:5]

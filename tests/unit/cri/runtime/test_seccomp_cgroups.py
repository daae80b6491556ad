"""Seccomp profile loading and cgroup helpers (pure parts)."""

import json
from pathlib import Path

import pytest

from cri.runtime.cgroups import CgroupV1, cpu_shares_to_weight, own_cgroup_paths
from cri.runtime.errors import FailedPreconditionError, InvalidArgumentError
from cri.runtime.model import CONTAINER_TRANSITIONS, ContainerState
from cri.runtime.seccomp import load_localhost_profile, runtime_default_profile


def test_docker_format_profile_is_converted(tmp_path: Path) -> None:
    """archMap and `name` entries become OCI architectures and names."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({
        "defaultAction": "SCMP_ACT_ERRNO",
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86"]}],
        "syscalls": [{"name": "read", "action": "SCMP_ACT_ALLOW"},
                     {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]}],
    }))  # fmt: skip
    prof = load_localhost_profile(str(path))
    assert prof["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"]
    assert prof["syscalls"][0] == {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
    assert prof["syscalls"][1]["args"] == [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{", "not readable JSON"),
        ('{"defaultAction": "SCMP_ACT_NOPE"}', "defaultAction"),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["x"], "action": "BOOM"}]}',
            "unknown seccomp action",
        ),
        (
            '{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"action": "SCMP_ACT_ALLOW"}]}',
            "no syscall names",
        ),
    ],
)
def test_invalid_profiles_are_invalid_argument(tmp_path: Path, body: str, message: str) -> None:
    """A broken profile is refused with a message, before any runc is run."""
    path = tmp_path / "p.json"
    path.write_text(body)
    with pytest.raises(InvalidArgumentError, match=message):
        load_localhost_profile(str(path))


def test_runtime_default_denies_namespace_and_kernel_calls() -> None:
    """RuntimeDefault returns EPERM for unshare, mount, kexec and module loading."""
    denied = runtime_default_profile()["syscalls"][0]["names"]
    assert {"unshare", "mount", "kexec_load", "init_module", "bpf"} <= set(denied)


@pytest.mark.parametrize(
    ("shares", "weight"), [(0, 0), (2, 1), (1024, 100), (262144, 10000), (512, 59)]
)
def test_shares_to_weight(shares: int, weight: int) -> None:
    """The current v1 shares -> v2 weight mapping keeps 1024 -> 100 and both ends."""
    assert cpu_shares_to_weight(shares) == weight


def test_own_cgroup_paths_and_base() -> None:
    """The base sits beneath this process's own memory cgroup in a hybrid layout."""
    text = "4:memory:/a/b\n1:cpu,cpuacct:/\n0::/u\n"
    assert own_cgroup_paths(text) == {"memory": "/a/b", "cpu": "/", "cpuacct": "/", "": "/u"}
    drv = CgroupV1(parent_name="kp", proc_self_cgroup=text, root=Path("/nonexistent"))
    assert drv.base == "/a/b/kp"
    assert drv.pod_path(qos="Burstable", pod_uid="u1") == "/a/b/kp/kubepods/burstable/podu1"
    assert drv.pod_path(qos="Guaranteed", pod_uid="u1") == "/a/b/kp/kubepods/podu1"


def test_container_state_machine_refuses_illegal_moves() -> None:
    """Only the declared transitions happen; e.g. an exited container never runs again."""
    ContainerState.CREATED.check_move(ContainerState.RUNNING, what="t")
    with pytest.raises(FailedPreconditionError, match="exited to running"):
        ContainerState.EXITED.check_move(ContainerState.RUNNING, what="t")
    assert ContainerState.EXITED not in CONTAINER_TRANSITIONS[ContainerState.EXITED]

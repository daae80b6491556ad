"""config.json parsing, mount options and resources → cgroup writes (pure)."""

import copy
from typing import Any

import pytest

from cri.oci.errors import SpecError
from cri.oci.spec import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_SLAVE,
    MS_STRICTATIME,
    Resources,
    cpu_shares_to_weight,
    parse_mount_options,
    parse_resources,
    parse_spec,
    v1_writes,
    v2_writes,
)
from cri.runtime.model import ContainerConfig, Mount, SecurityContext
from cri.runtime.model import Resources as ContainerResources
from cri.runtime.translate import ImageDefaults, ResolvedUser, SandboxPaths, container_spec


def _translated(**security: Any) -> dict[str, Any]:
    """A spec exactly as the runtime service's translation produces it."""
    config = ContainerConfig(
        name="main",
        image="busybox",
        mounts=(Mount(container_path="/data", host_path="/srv/data", readonly=True),),
        resources=ContainerResources(memory_limit_bytes=64 << 20, cpu_quota=50000,
                                     cpu_period=100000, cpu_shares=512, pids_limit=100),
        security=SecurityContext(**security),
    )  # fmt: skip
    sandbox = SandboxPaths(hostname="pod", netns="/run/ns/net", ipcns="/run/ns/ipc",
                           utsns="/run/ns/uts", pidns=None, hosts_file="/h", resolv_conf="/r",
                           hostname_file="/n", shm_dir="/shm")  # fmt: skip
    return container_spec(
        config, sandbox=sandbox, image=ImageDefaults(argv=("sh",)),
        user=ResolvedUser(1000, 1000, (5,)),
        rootfs="/rootfs", cgroups_path="/kubepods/pod1/ctr", sysctls={"net.ipv4.ip_forward": "1"},
    )  # fmt: skip


def test_translated_spec_parses() -> None:
    """Everything translate.py emits is understood: namespaces, mounts, user, limits."""
    spec = parse_spec(_translated(readonly_rootfs=True))
    assert spec.root_path == "/rootfs" and spec.root_readonly
    assert spec.process.args == ("sh",)
    assert (spec.process.user.uid, spec.process.user.gid) == (1000, 1000)
    assert spec.process.user.additional_gids == (5,)
    assert [(n.kind, n.path) for n in spec.namespaces] == [
        ("mount", ""), ("pid", ""), ("network", "/run/ns/net"), ("ipc", "/run/ns/ipc"),
        ("uts", "/run/ns/uts"),
    ]  # fmt: skip
    assert spec.cgroups_path == "/kubepods/pod1/ctr"
    assert spec.resources.memory_limit == 64 << 20 and spec.resources.pids_limit == 100
    assert spec.sysctl == (("net.ipv4.ip_forward", "1"),)
    assert "/proc/kcore" in spec.masked_paths and "/proc/sys" in spec.readonly_paths
    assert spec.process.rlimits[0][0] == 7  # RLIMIT_NOFILE
    data = next(m for m in spec.mounts if m.destination == "/data")
    assert data.is_bind and data.options.flags & MS_RDONLY and data.options.flags & MS_REC


def test_env_lookup_takes_the_last_value() -> None:
    """Process.env_value reads KEY=VALUE entries, the last one winning."""
    doc = _translated()
    doc["process"]["env"] = ["A=1", "PATH=/bin", "A=2"]
    assert parse_spec(doc).process.env_value("A") == "2"
    assert parse_spec(doc).process.env_value("B") is None


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (("process", "args"), [], "process.args"),
        (("process", "args"), "sh", "process.args"),
        (("process", "cwd"), "relative", "process.cwd"),
        (("process", "env"), ["NOEQUALS"], "process.env"),
        (("process", "user", "uid"), "0", "process.user.uid"),
        (("process", "rlimits"), [{"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}], "rlimits"),
        (("root", "path"), "", "root.path"),
        (("linux", "namespaces"), [{"type": "pid"}, {"type": "pid"}], "listed twice"),
        (("linux", "namespaces"), [{"type": "nope"}], "unknown namespace"),
        (("linux", "cgroupsPath"), "/a/../b", "cgroupsPath"),
        (("linux", "sysctl"), {"kernel/x": "1"}, "linux.sysctl"),
        (("linux", "resources", "memory", "limit"), "1G", "memory.limit"),
        (("linux", "resources", "devices"), [{"allow": True, "type": "x"}], "devices[0].type"),
        (("linux", "rootfsPropagation"), "sideways", "rootfsPropagation"),
    ],
)
def test_bad_fields_name_their_json_path(
    path: tuple[str, ...], value: object, message: str
) -> None:
    """A wrong field is a SpecError that says where it is."""
    doc = copy.deepcopy(_translated())
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value
    with pytest.raises(SpecError, match=message.replace(".", r"\.").replace("[", r"\[")):
        parse_spec(doc)


def test_mount_options() -> None:
    """Flags (last wins), propagation and the rest as data, as mount(8) reads them."""
    opts = parse_mount_options(
        ["nosuid", "noexec", "ro", "rw", "rbind", "rslave", "mode=755", "size=64k", "tmpcopyup"]
    )
    assert opts.flags == MS_NOSUID | MS_NOEXEC | MS_BIND | MS_REC
    assert opts.propagation == (MS_SLAVE | MS_REC,)
    assert opts.data == "mode=755,size=64k"
    dev = parse_mount_options(["nosuid", "strictatime", "mode=755", "dev", "nodev", "private"])
    assert dev.flags == MS_NOSUID | MS_STRICTATIME | MS_NODEV
    assert dev.propagation == (MS_PRIVATE,)


def test_v1_writes_in_order() -> None:
    """cgroup v1 files: cpu period before quota, memory, pids, devices with the defaults."""
    res = parse_resources({
        "cpu": {"shares": 512, "quota": 50000, "period": 100000},
        "memory": {"limit": 1 << 26, "swap": 1 << 27},
        "pids": {"limit": 100},
        "devices": [{"allow": False, "access": "rwm"}, {"allow": True, "type": "c", "major": 10,
                                                         "minor": 229, "access": "rw"}],
    })  # fmt: skip
    writes = v1_writes(res)
    assert writes[:3] == [("cpu", "cpu.shares", "512"), ("cpu", "cpu.cfs_period_us", "100000"),
                          ("cpu", "cpu.cfs_quota_us", "50000")]  # fmt: skip
    assert ("memory", "memory.limit_in_bytes", str(1 << 26)) in writes
    assert writes.index(("memory", "memory.limit_in_bytes", str(1 << 26))) < writes.index(
        ("memory", "memory.memsw.limit_in_bytes", str(1 << 27))
    )
    assert ("pids", "pids.max", "100") in writes
    devices = [(f, v) for c, f, v in writes if c == "devices"]
    assert devices[0] == ("devices.deny", "a *:* rwm")
    assert devices[1] == ("devices.allow", "c 10:229 rw")
    assert ("devices.allow", "c 1:3 rwm") in devices  # /dev/null stays usable
    assert ("devices.allow", "c 136:* rwm") in devices  # and the ptys


def test_privileged_devices_allow_all_without_defaults() -> None:
    """An allow-all rule is written alone."""
    writes = v1_writes(parse_resources({"devices": [{"allow": True, "access": "rwm"}]}))
    assert writes == [("devices", "devices.allow", "a *:* rwm")]


def test_v2_writes() -> None:
    """cgroup v2: cpu.weight from shares, cpu.max, memory.max and swap, pids.max."""
    res = Resources(cpu_shares=1024, cpu_quota=20000, cpu_period=100000, memory_limit=1 << 26,
                    memory_swap=1 << 27, pids_limit=-1)  # fmt: skip
    assert v2_writes(res) == [
        ("cpu.weight", "100"),
        ("cpu.max", "20000 100000"),
        ("memory.max", str(1 << 26)),
        ("memory.swap.max", str(1 << 26)),
        ("pids.max", "max"),
    ]
    assert v2_writes(Resources(cpu_period=50000)) == [("cpu.max", "max 50000")]


@pytest.mark.parametrize(("shares", "weight"), [(2, 1), (1024, 100), (262144, 10000), (512, 59)])
def test_cpu_shares_to_weight(shares: int, weight: int) -> None:
    """The runc/crun mapping: 2 → 1, 1024 → 100, 262144 → 10000."""
    assert cpu_shares_to_weight(shares) == weight

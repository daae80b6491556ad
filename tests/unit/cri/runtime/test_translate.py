"""CRI container request -> OCI runtime spec, case by case, without root."""

import pytest

from cri.runtime.errors import InvalidArgumentError
from cri.runtime.model import (
    Capabilities,
    ContainerConfig,
    Mount,
    MountPropagation,
    NamespaceMode,
    NamespaceOptions,
    Resources,
    SecurityContext,
)
from cri.runtime.translate import (
    DEFAULT_CAPABILITIES,
    DEFAULT_MASKED_PATHS,
    ImageDefaults,
    ResolvedUser,
    SandboxPaths,
    container_spec,
    resolve_user,
)

SANDBOX = SandboxPaths(
    hostname="pod1", netns="/s/ns/net", ipcns="/s/ns/ipc", utsns="/s/ns/uts", pidns=None,
    hosts_file="/s/hosts", resolv_conf="/s/resolv.conf", hostname_file="/s/hostname",
    shm_dir="/s/shm",
)  # fmt: skip
IMAGE = ImageDefaults(env=("PATH=/bin", "LANG=C"), working_dir="/app", argv=("/bin/app", "-v"))
ROOT = ResolvedUser(0, 0)


def spec(config: ContainerConfig, **kw: object) -> dict:  # type: ignore[type-arg]
    return container_spec(
        config, sandbox=SANDBOX, image=IMAGE, user=ROOT, rootfs="/r", cgroups_path="/cg/c1",
        **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_defaults_follow_containerd() -> None:
    """Default caps, masked and read-only paths, NOFILE limit, and the pod's namespaces."""
    s = spec(ContainerConfig(name="c", image="i"))
    assert s["process"]["capabilities"]["bounding"] == list(DEFAULT_CAPABILITIES)
    assert s["linux"]["maskedPaths"] == list(DEFAULT_MASKED_PATHS)
    assert "/proc/sys" in s["linux"]["readonlyPaths"]
    assert s["process"]["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1048576, "soft": 1048576}]
    kinds = {n["type"]: n.get("path") for n in s["linux"]["namespaces"]}
    assert kinds == {
        "mount": None,
        "pid": None,
        "network": "/s/ns/net",
        "ipc": "/s/ns/ipc",
        "uts": "/s/ns/uts",
    }
    assert s["process"]["cwd"] == "/app" and s["process"]["args"] == ["/bin/app", "-v"]
    assert s["hostname"] == "pod1" and s["linux"]["cgroupsPath"] == "/cg/c1"


def test_env_merges_image_then_container_and_adds_hostname() -> None:
    """Container env overrides the image's; HOSTNAME is set; PATH kept from the image."""
    s = spec(ContainerConfig(name="c", image="i", envs=(("LANG", "en"), ("X", "1"))))
    env = dict(e.split("=", 1) for e in s["process"]["env"])
    assert env == {"PATH": "/bin", "LANG": "en", "HOSTNAME": "pod1", "X": "1"}


def test_capability_add_drop_and_all() -> None:
    """add/drop accept names with or without CAP_, and ALL works both ways."""
    sec = SecurityContext(capabilities=Capabilities(add=("NET_ADMIN",), drop=("CAP_CHOWN", "kill")))
    caps = spec(ContainerConfig(name="c", image="i", security=sec))["process"]["capabilities"][
        "bounding"
    ]
    assert "CAP_NET_ADMIN" in caps and "CAP_CHOWN" not in caps and "CAP_KILL" not in caps
    dropped = SecurityContext(capabilities=Capabilities(add=("NET_BIND_SERVICE",), drop=("ALL",)))
    caps = spec(ContainerConfig(name="c", image="i", security=dropped))["process"]["capabilities"][
        "bounding"
    ]
    assert caps == ["CAP_NET_BIND_SERVICE"]
    with pytest.raises(InvalidArgumentError, match="unknown capability"):
        spec(
            ContainerConfig(
                name="c",
                image="i",
                security=SecurityContext(capabilities=Capabilities(add=("FLY",))),
            )
        )


def test_privileged_gets_everything_and_no_masks() -> None:
    """Privileged: all caps, all devices, writable /sys, no masked paths, no seccomp."""
    s = spec(
        ContainerConfig(name="c", image="i", security=SecurityContext(privileged=True)),
        seccomp={"defaultAction": "SCMP_ACT_ALLOW"},
    )
    assert "CAP_SYS_ADMIN" in s["process"]["capabilities"]["bounding"]
    assert "maskedPaths" not in s["linux"] and "seccomp" not in s["linux"]
    assert s["linux"]["resources"]["devices"] == [{"allow": True, "access": "rwm"}]
    sysfs = next(m for m in s["mounts"] if m["destination"] == "/sys")
    assert "rw" in sysfs["options"]


def test_resources_become_cgroup_limits() -> None:
    """CPU shares/quota/period, memory and pids limits land in linux.resources."""
    r = Resources(
        cpu_shares=512,
        cpu_quota=50000,
        cpu_period=100000,
        memory_limit_bytes=1 << 26,
        pids_limit=64,
    )
    res = spec(ContainerConfig(name="c", image="i", resources=r))["linux"]["resources"]
    assert res["cpu"] == {"shares": 512, "quota": 50000, "period": 100000}
    assert res["memory"] == {"limit": 1 << 26} and res["pids"] == {"limit": 64}


def test_mounts_sorted_with_propagation_and_readonly() -> None:
    """CRI mounts are rbind with their propagation; parents before children; ro honoured."""
    mounts = (
        Mount("/data/sub", "/h/sub", readonly=True),
        Mount("/data", "/h/data", propagation=MountPropagation.HOST_TO_CONTAINER),
    )
    s = spec(ContainerConfig(name="c", image="i", mounts=mounts))
    user = [m for m in s["mounts"] if m["destination"].startswith("/data")]
    assert [m["destination"] for m in user] == ["/data", "/data/sub"]
    assert user[0]["options"] == ["rbind", "rslave", "rw"]
    assert user[1]["options"] == ["rbind", "rprivate", "ro"]
    with pytest.raises(InvalidArgumentError, match="not absolute"):
        spec(ContainerConfig(name="c", image="i", mounts=(Mount("rel", "/h"),)))


def test_host_namespaces_are_left_out() -> None:
    """A hostNetwork/hostIPC sandbox has no netns/ipc paths; hostPID drops the pid namespace."""
    host = SandboxPaths("n", None, None, None, None, "/h", "/r", "/hn", None)
    sec = SecurityContext(namespace_options=NamespaceOptions(pid=NamespaceMode.NODE))
    s = container_spec(
        ContainerConfig(name="c", image="i", security=sec),
        sandbox=host,
        image=IMAGE,
        user=ROOT,
        rootfs="/r",
        cgroups_path="/c",
    )
    assert [n["type"] for n in s["linux"]["namespaces"]] == ["mount"]
    shm = next(m for m in s["mounts"] if m["destination"] == "/dev/shm")
    assert shm["type"] == "tmpfs"


def test_no_command_is_an_error() -> None:
    """An image and container with nothing to run cannot make a spec."""
    with pytest.raises(InvalidArgumentError):
        container_spec(
            ContainerConfig(name="c", image="i"),
            sandbox=SANDBOX,
            image=ImageDefaults(),
            user=ROOT,
            rootfs="/r",
            cgroups_path="/c",
        )


PASSWD = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n"
GROUP = "root:x:0:\napp:x:1000:\nwheel:x:10:app\n"


@pytest.mark.parametrize(
    ("image_user", "kw", "expected"),
    [
        ("", {}, ResolvedUser(0, 0, ())),
        ("app", {}, ResolvedUser(1000, 1000, (10,))),
        ("1000", {}, ResolvedUser(1000, 1000, (10,))),
        ("4242", {}, ResolvedUser(4242, 0, ())),
        ("app:wheel", {}, ResolvedUser(1000, 10, ())),
        ("1000:99", {}, ResolvedUser(1000, 99, (10,))),
        ("app", {"run_as_user": 0}, ResolvedUser(0, 0, ())),
        (
            "",
            {"run_as_username": "app", "run_as_group": 5, "supplemental_groups": (7,)},
            ResolvedUser(1000, 5, (10, 7)),
        ),
    ],
)
def test_user_resolution(image_user: str, kw: dict, expected: ResolvedUser) -> None:  # type: ignore[type-arg]
    """USER forms and runAs* overrides resolve through the image's passwd and group files."""
    args = {
        "run_as_user": None,
        "run_as_username": "",
        "run_as_group": None,
        "supplemental_groups": (),
    }
    args.update(kw)
    assert (
        resolve_user(image_user=image_user, passwd=PASSWD, group=GROUP, what="t", **args)
        == expected
    )


def test_unknown_user_name_is_an_error() -> None:
    """A USER name missing from /etc/passwd is refused, as Docker does."""
    with pytest.raises(InvalidArgumentError, match="not in the image's /etc/passwd"):
        resolve_user(image_user="ghost", run_as_user=None, run_as_username="", run_as_group=None,
                     supplemental_groups=(), passwd=PASSWD, group=GROUP, what="t")  # fmt: skip

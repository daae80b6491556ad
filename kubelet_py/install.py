"""`kubelet-py install`: a systemd unit and a config dir for running kubelet-py on a real host.

    <prefix>/etc/systemd/system/kubelet-py.service   the unit (rendered by `unit_file()`)
    <prefix>/etc/kubelet-py/config.yaml              KubeletConfiguration: rotation on,
                                                     serving cert by CSR, static pod dir
    <prefix>/etc/kubelet-py/kubelet-py.env           extra flags (KUBELET_PY_ARGS)
    <prefix>/etc/kubelet-py/manifests/               static pods

`plan_install()` is pure (paths and contents); `apply_install()` writes them atomically
and never overwrites a file that exists unless asked to. The unit keeps containers
alive across restarts of the agent (KillMode=process: only the agent is stopped, not
conmon and the containers it holds) and delegates its cgroup (Delegate=yes), since
the agent makes its pod cgroups beneath its own. packaging/kubelet-py.service is this
unit rendered with the defaults, for distribution packagers (a test keeps them equal).
After installing: `kubelet-py join --no-start ...`, then
`systemctl daemon-reload && systemctl enable --now kubelet-py`.
"""

from dataclasses import dataclass
from pathlib import Path

import yaml

from cri.fsutil import write_atomic

DEFAULT_EXEC = Path("/usr/local/bin/kubelet-py")
DEFAULT_CONFIG_DIR = Path("/etc/kubelet-py")
DEFAULT_ROOT_DIR = Path("/var/lib/kubelet-py")
UNIT_PATH = Path("etc/systemd/system/kubelet-py.service")


class InstallError(Exception):
    """A file to install already exists (and --force was not given), or cannot be written."""


def unit_file(
    *,
    exec_path: Path = DEFAULT_EXEC,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    root_dir: Path = DEFAULT_ROOT_DIR,
) -> str:
    return f"""\
# kubelet-py: a Kubernetes node agent in Python. Written by `kubelet-py install`.
[Unit]
Description=kubelet-py: Kubernetes node agent
Documentation=https://github.com/kubelet-py/kubelet-py
Wants=network-online.target
After=network-online.target

[Service]
Type=simple
EnvironmentFile=-{config_dir}/kubelet-py.env
ExecStart={exec_path} node run --config {config_dir}/config.yaml \\
    --root-dir {root_dir} $KUBELET_PY_ARGS
Restart=always
RestartSec=5
# Stop only the agent: conmon and the containers it holds keep running, and the agent
# re-adopts them when it starts again (upgrades and restarts do not restart pods).
KillMode=process
# The agent makes pod cgroups beneath its own.
Delegate=yes
OOMScoreAdjust=-999
LimitNOFILE=1048576

[Install]
WantedBy=multi-user.target
"""


def config_yaml(*, config_dir: Path = DEFAULT_CONFIG_DIR) -> str:
    """A KubeletConfiguration with the fields kubelet-py reads."""
    doc = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "staticPodPath": str(config_dir / "manifests"),
        "rotateCertificates": True,
        "serverTLSBootstrap": True,
        "port": 10250,
        "healthzPort": 10248,
        "clusterDomain": "cluster.local",
        "authentication": {"anonymous": {"enabled": False}},
        "maxPods": 110,
    }
    return yaml.safe_dump(doc, sort_keys=False)


def env_file(*, root_dir: Path = DEFAULT_ROOT_DIR) -> str:
    return (
        "# Extra flags for `kubelet-py node run` (see `kubelet-py node run --help`).\n"
        "# `kubelet-py join --no-start` writes the kubeconfig named here.\n"
        f"KUBELET_PY_ARGS=--kubeconfig {root_dir}/kubelet.conf\n"
    )


@dataclass(frozen=True)
class InstallFile:
    path: Path
    content: str
    mode: int


def plan_install(
    prefix: Path,
    *,
    exec_path: Path = DEFAULT_EXEC,
    config_dir: Path = DEFAULT_CONFIG_DIR,
    root_dir: Path = DEFAULT_ROOT_DIR,
) -> tuple[list[InstallFile], list[Path]]:
    """The files and directories to make under `prefix` (paths inside are absolute on the host)."""

    def under(p: Path) -> Path:
        return prefix / p.relative_to(p.anchor)

    files = [
        InstallFile(
            under(Path("/") / UNIT_PATH),
            unit_file(exec_path=exec_path, config_dir=config_dir, root_dir=root_dir),
            0o644,
        ),
        InstallFile(under(config_dir / "config.yaml"), config_yaml(config_dir=config_dir), 0o644),
        InstallFile(under(config_dir / "kubelet-py.env"), env_file(root_dir=root_dir), 0o644),
    ]
    dirs = [under(config_dir / "manifests"), under(root_dir)]
    return files, dirs


def apply_install(files: list[InstallFile], dirs: list[Path], *, force: bool = False) -> None:
    clash = [f.path for f in files if f.path.exists() and not force]
    if clash:
        raise InstallError(
            "not overwriting " + ", ".join(map(str, clash)) + " (use --force to replace them)"
        )
    try:
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True, mode=0o755)
        for f in files:
            write_atomic(f.path, f.content.encode(), mode=f.mode)
    except OSError as err:
        raise InstallError(f"installing kubelet-py: {err}") from err

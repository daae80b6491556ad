"""`kubelet-py install` renders its unit and config into a temp root (never onto this host)."""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from kubelet_py.cli import main
from kubelet_py.install import InstallError, apply_install, plan_install, unit_file

REPO = Path(__file__).resolve().parents[2]


def test_packaged_unit_is_the_rendered_default() -> None:
    """packaging/kubelet-py.service is exactly what `install` writes with default paths."""
    assert (REPO / "packaging" / "kubelet-py.service").read_text() == unit_file()


def test_install_writes_unit_config_and_dirs_under_a_prefix(tmp_path: Path) -> None:
    """Files land under --prefix with host paths inside; a second run refuses to overwrite."""
    assert main(["install", "--prefix", str(tmp_path), "--exec", "/bin/true"]) == 0
    unit = (tmp_path / "etc/systemd/system/kubelet-py.service").read_text()
    assert "ExecStart=/bin/true node run --config /etc/kubelet-py/config.yaml" in unit
    assert "KillMode=process" in unit and "Delegate=yes" in unit
    cfg = yaml.safe_load((tmp_path / "etc/kubelet-py/config.yaml").read_text())
    assert cfg["kind"] == "KubeletConfiguration" and cfg["rotateCertificates"] is True
    assert cfg["staticPodPath"] == "/etc/kubelet-py/manifests"
    assert (
        "--kubeconfig /var/lib/kubelet-py/kubelet.conf"
        in (tmp_path / "etc/kubelet-py/kubelet-py.env").read_text()
    )
    assert (tmp_path / "etc/kubelet-py/manifests").is_dir()
    assert (tmp_path / "var/lib/kubelet-py").is_dir()
    files, dirs = plan_install(tmp_path)
    with pytest.raises(InstallError, match="not overwriting"):
        apply_install(files, dirs)
    apply_install(files, dirs, force=True)


def test_rendered_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd itself accepts the unit (with an executable that exists here)."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze (package systemd) is needed to check the unit"
    path = tmp_path / "kubelet-py.service"
    path.write_text(unit_file(exec_path=Path("/bin/true"), config_dir=tmp_path))
    proc = subprocess.run(
        [analyze, "verify", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr

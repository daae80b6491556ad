"""One real control plane per test session, in its own lab network namespace."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from kubelet_py.devcluster import LocalCluster, ensure_binaries


def _progress(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@pytest.fixture(scope="session")
def cluster(require_root: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A started LocalCluster; stopped (processes, forwarder, namespaces) after the session."""
    binaries = ensure_binaries(progress=_progress)
    work_dir = tmp_path_factory.mktemp("cluster")
    lab = LocalCluster(binaries=binaries, work_dir=work_dir, progress=_progress)
    lab.start()
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def admin_api(cluster: LocalCluster) -> client.ApiClient:
    """An API client for the cluster admin (system:masters), from the root namespace."""
    return config.new_client_from_config(config_file=str(cluster.admin_kubeconfig))


def api_client_for(kubeconfig: bytes, tmp_path: Path) -> client.ApiClient:
    path = tmp_path / "kubeconfig"
    path.write_bytes(kubeconfig)
    return config.new_client_from_config(config_file=str(path))

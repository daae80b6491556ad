"""SeaweedFS for tests: the same server the demo runs (kubelet_py/devcluster/seaweedfs.py)."""

from kubelet_py.devcluster.seaweedfs import ACCESS_KEY, SECRET_KEY, SeaweedS3

__all__ = ["ACCESS_KEY", "SECRET_KEY", "SeaweedS3"]

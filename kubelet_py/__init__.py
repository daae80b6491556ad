"""kubelet-py: a Kubernetes node agent written in Python.

The agent (this package) drives its own container runtime (`cri`), network
plugins (`cni`) and volume drivers (`csi_volumes`) through their public
interfaces only; see docs/ARCHITECTURE.md for the map.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""The exception tree of `kubelet_py.devcluster`, in one place."""


class DevClusterError(Exception):
    """Anything that went wrong while building, starting or stopping the local cluster."""


class BuildError(DevClusterError):
    """The Go build of the control-plane binaries failed."""


class ComponentStartError(DevClusterError):
    """A control-plane component exited or never became healthy."""


class NetLabError(DevClusterError):
    """Creating or removing a lab network namespace or link failed."""


class PKIError(DevClusterError):
    """A certificate or key could not be made or read."""

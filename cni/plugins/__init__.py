"""CNI plugins run as executables: bridge, host-local, loopback, portmap, isolation.

Each plugin is a module with `main()`; `cni.install` writes small shims named
after the plugin types into a directory a runtime puts in CNI_PATH. The shared
protocol handling (environment, stdin, result or error on stdout) is `skel`.
Plugins are short-lived processes, so modules import only what they use.
"""

PLUGINS = {
    "bridge": "cni.plugins.bridge",
    "host-local": "cni.plugins.hostlocal",
    "loopback": "cni.plugins.loopback",
    "portmap": "cni.plugins.portmap",
    "kpy-isolation": "cni.plugins.isolation",
}
"""Plugin type (the executable's file name) -> module with a `main()`."""

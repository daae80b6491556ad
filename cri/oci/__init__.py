"""kubelet-py's own OCI executor: a runc-compatible command line in Python.

    conmon / runtime service ──argv──▶ cli ──▶ create ──fork──▶ init (container PID 1)
                                         ├───▶ start, kill, delete, state
                                         └───▶ exec (joins a running container)

`spec` turns config.json into typed values (pure); `seccomp` compiles a profile
to classic BPF (pure); `cgroups`, `rootfs`, `linux` carry the spec out with raw
syscalls through ctypes. Every command runs in a fresh `python3 -IS` (see
`launcher`), so nothing here imports more than a command needs: startup time is
the budget that makes this faster than runc.
"""

__all__: list[str] = []

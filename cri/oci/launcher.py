"""A fast-starting `kubelet-py-oci` executable: `#!<python> -IS` and a fixed sys.path.

pip's console-script wrapper runs the interpreter with `site`, which imports every
`.pth` hook of the environment (~25 ms here, more than runc's whole create).
`-I -S` skips that: the wrapper puts just this project's import root on
sys.path. The runtime service writes one of these into its state directory and
hands its path to conmon as the OCI runtime.

    python3 -m cri.oci.launcher /path/to/kubelet-py-oci
"""

# No pathlib here: it imports re, fnmatch and urllib, ~5 ms of every command's budget.
# ruff: noqa: PTH100, PTH104, PTH120, PTH123

from __future__ import annotations

import os
import sys

TEMPLATE = """#!{python} -IS
# Written by cri.oci.launcher: kubelet-py's OCI executor without site's import cost.
import os, sys
sys.path.insert(0, {root!r})
from cri.oci.cli import main
os._exit(main())  # all output went out through os.write: skip the interpreter's teardown
"""


def import_root() -> str:
    """The directory that holds the `cri` package."""
    import cri

    return os.path.dirname(os.path.dirname(os.path.abspath(cri.__file__ or "")))


def render(*, python: str | None = None, root: str | None = None) -> str:
    return TEMPLATE.format(python=python or sys.executable, root=root or import_root())


def write_launcher(path: str, *, python: str | None = None) -> str:
    """Write (atomically) an executable launcher at `path`; returns `path`."""
    text = render(python=os.path.realpath(python or sys.executable))
    try:
        with open(path) as f:
            if f.read() == text:
                return path
    except OSError:
        pass
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o755)  # noqa: S103 - an executable, like /usr/bin's
    os.rename(tmp, path)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python3 -m cri.oci.launcher DEST")
    print(write_launcher(sys.argv[1]))

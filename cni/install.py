"""Install the plugins as executables named after their types, for a runtime's CNI_PATH.

Each file is a short Python shim run as `python -IS` (isolated, no `site`):
no user site, no .pth processing, no PYTHONPATH surprises, which keeps plugin
start-up short. The shim puts this package's root and the directory holding
pyroute2 on sys.path, and ends the process with os._exit once the answer is
flushed. Generic names such as `bridge` belong in a plugin
directory (e.g. /opt/cni/bin), never on the system PATH.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from cni.errors import CNIError, Code
from cni.plugins import PLUGINS


def shim_text(module: str, *, python: str, paths: list[str]) -> str:
    """The executable's text (pure)."""
    return (
        f"#!{python} -IS\n"
        f"# CNI plugin shim written by `python3 -m cni install`; runs {module}.main().\n"
        "import sys\n"
        f"sys.path[:0] = {paths!r}\n"
        f"from {module} import main\n"
        "code = main()\n"
        "sys.stdout.flush()\n"
        "sys.stderr.flush()\n"
        "# Skip the interpreter's teardown (module and GC clean-up): nothing is left to\n"
        "# flush or close, and it costs a plugin a few ms per run.\n"
        "import os\n"
        "os._exit(code)\n"
    )


def _search_paths() -> list[str]:
    root = str(Path(__file__).resolve().parent.parent)
    paths = [root]
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.origin is None:
        raise CNIError(Code.NOT_AVAILABLE, "pyroute2 is not installed", "pip install pyroute2")
    site = str(Path(spec.origin).resolve().parent.parent)
    if site not in paths:
        paths.append(site)
    return paths


def install(directory: Path, *, python: str | None = None) -> list[Path]:
    """Write one shim per plugin into `directory` (atomically each); returns the paths."""
    interpreter = python or os.path.realpath(sys.executable)
    paths = _search_paths()
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, module in sorted(PLUGINS.items()):
        target = directory / name
        tmp = directory / f".{name}.tmp"
        tmp.write_text(shim_text(module, python=interpreter, paths=paths))
        tmp.chmod(0o755)
        tmp.rename(target)
        written.append(target)
    return written

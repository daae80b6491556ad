"""Small Go programs the tests need inside containers, built once and cached.

`grpc_health_binary()` compiles tests/support/grpchealth (our own gRPC health server,
standard library only, see its main.go) into a static binary under
~/.cache/kubelet-py/test-bin/, named by the hash of its sources, so later runs reuse it
and a change to the sources rebuilds it. The build needs the Go toolchain that the
control-plane build uses, and nothing from the network (no module dependencies).
"""

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

GRPC_HEALTH_SRC = Path(__file__).resolve().parent / "grpchealth"
CACHE = Path(os.environ.get("KUBELET_PY_CACHE", Path.home() / ".cache" / "kubelet-py"))


class GoBuildError(RuntimeError):
    """The Go toolchain is missing or the build failed; the message has its output."""


def _go() -> str:
    local = Path("/usr/local/go/bin/go")
    found = shutil.which("go") or (str(local) if local.exists() else None)
    if found is None:
        raise GoBuildError("no Go toolchain (go) found: it is installed by scripts/setup")
    return found


def build_static(src: Path, name: str) -> Path:
    """A static (CGO off, stripped) binary of the Go main package in `src`, cached."""
    digest = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.suffix in (".go", ".mod"):
            digest.update(f.name.encode() + b"\0" + f.read_bytes())
    out = CACHE / "test-bin" / f"{name}-{digest.hexdigest()[:16]}"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        partial = Path(tmp) / name
        proc = subprocess.run(
            [_go(), "build", "-trimpath", "-ldflags=-s -w", "-o", str(partial), "."],
            cwd=src, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise GoBuildError(f"go build of {src} failed:\n{proc.stderr[-3000:]}")
        partial.replace(out)  # atomic: a killed build never leaves a binary behind
    return out


def grpc_health_binary() -> Path:
    """The grpc-health test server (grpc.health.v1.Health/Check over h2c)."""
    return build_static(GRPC_HEALTH_SRC, "grpc-health")

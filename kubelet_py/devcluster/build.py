"""Build the Kubernetes control plane and etcd from their Go modules, cached by version.

`k8s.io/kubernetes` cannot be `go install`ed: its go.mod replaces every
`k8s.io/<staging>` module with a directory inside its own tree. A small wrapper
module requires `k8s.io/kubernetes vX.Y.Z` and replaces each staging module with
its published `v0.Y.Z` instead; the list of staging modules is read from the
pinned release's own go.mod, so a version bump needs no hand edits. etcd's server
module (whose root package is the `etcd` command) is built in the same module at
the version Kubernetes itself requires.

Binaries land in `<cache>/control-plane/<k8s version>-<go version>/bin`, written
to a temp directory and renamed into place, so an interrupted build is never
mistaken for a finished one. Go's own module and build caches make a rebuild after
a cache wipe much faster than the first.
"""

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kubelet_py.devcluster.errors import BuildError
from kubelet_py.devcluster.fsutil import write_atomic

K8S_VERSION = "v1.37.2"

ETCD_PACKAGE = "go.etcd.io/etcd/server/v3"
K8S_COMMANDS: Mapping[str, str] = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
# `go build -o dir/` names a binary after its package path, dropping a major-version
# suffix: go.etcd.io/etcd/server/v3 becomes `server`.
ETCD_BUILT_NAME = "server"
WRAPPER_MODULE = "kubeletpy.local/k8sbuild"

Progress = Callable[[str], None]

_STAGING_RE = re.compile(r"^\s*(k8s\.io/[A-Za-z0-9._-]+)\s+=>\s+\./staging/", re.MULTILINE)
_REQUIRE_RE = re.compile(r"^\s*go\.etcd\.io/etcd/server/v3\s+(v[0-9][^\s]*)", re.MULTILINE)
_GO_DIRECTIVE_RE = re.compile(r"^go\s+([0-9][^\s]*)", re.MULTILINE)


@dataclass(frozen=True)
class ControlPlaneBinaries:
    """Where the built binaries are, and which release they are."""

    version: str
    bin_dir: Path

    @property
    def kube_apiserver(self) -> Path:
        return self.bin_dir / "kube-apiserver"

    @property
    def kube_controller_manager(self) -> Path:
        return self.bin_dir / "kube-controller-manager"

    @property
    def kube_scheduler(self) -> Path:
        return self.bin_dir / "kube-scheduler"

    @property
    def kubectl(self) -> Path:
        return self.bin_dir / "kubectl"

    @property
    def etcd(self) -> Path:
        return self.bin_dir / "etcd"

    def all_paths(self) -> tuple[Path, ...]:
        return (
            self.kube_apiserver,
            self.kube_controller_manager,
            self.kube_scheduler,
            self.kubectl,
            self.etcd,
        )


def staging_modules(kubernetes_go_mod: str) -> list[str]:
    """The staging module paths that a `k8s.io/kubernetes` go.mod replaces with local dirs."""
    modules = sorted(set(_STAGING_RE.findall(kubernetes_go_mod)))
    if not modules:
        raise BuildError("k8s.io/kubernetes go.mod lists no ./staging replace directives")
    return modules


def staging_version(k8s_version: str) -> str:
    """`v1.37.2` -> `v0.37.2`: the tag the staging repos publish for a release."""
    match = re.fullmatch(r"v1\.(\d+)\.(\d+)", k8s_version)
    if match is None:
        raise BuildError(f"not a Kubernetes release version: {k8s_version!r} (want v1.Y.Z)")
    return f"v0.{match.group(1)}.{match.group(2)}"


def render_wrapper_go_mod(*, k8s_version: str, kubernetes_go_mod: str) -> str:
    """The go.mod of the wrapper module that builds the pinned release."""
    go_match = _GO_DIRECTIVE_RE.search(kubernetes_go_mod)
    go_directive = go_match.group(1) if go_match else "1.24"
    etcd_match = _REQUIRE_RE.search(kubernetes_go_mod)
    staged = staging_version(k8s_version)
    lines = [
        f"module {WRAPPER_MODULE}",
        "",
        f"go {go_directive}",
        "",
        "require (",
        f"\tk8s.io/kubernetes {k8s_version}",
    ]
    if etcd_match is not None:
        lines.append(f"\t{ETCD_PACKAGE} {etcd_match.group(1)}")
    lines += [")", "", "replace ("]
    lines += [f"\t{module} => {module} {staged}" for module in staging_modules(kubernetes_go_mod)]
    lines += [")", ""]
    return "\n".join(lines)


def render_tools_go() -> str:
    """A build-tagged file that keeps the commands' modules in the wrapper's go.mod."""
    imports = "\n".join(f'\t_ "{pkg}"' for pkg in (ETCD_PACKAGE, *K8S_COMMANDS.values()))
    return f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n"


def version_ldflags(k8s_version: str) -> str:
    """Linker flags that stamp the release into the binaries, as Kubernetes' own build does."""
    match = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", k8s_version)
    if match is None:
        raise BuildError(f"not a Kubernetes release version: {k8s_version!r}")
    pkg = "k8s.io/component-base/version"
    flags = {
        "gitVersion": k8s_version,
        "gitMajor": match.group(1),
        "gitMinor": match.group(2),
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
    }
    return " ".join(["-s", "-w", *(f"-X {pkg}.{k}={v}" for k, v in flags.items())])


def default_cache_root() -> Path:
    env = os.environ.get("KUBELET_PY_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kubelet-py"


def go_version() -> str:
    try:
        out = subprocess.run(
            ["go", "env", "GOVERSION"], check=True, capture_output=True, text=True
        ).stdout.strip()
    except FileNotFoundError as err:
        raise BuildError("the Go toolchain (`go`) is not on PATH; run scripts/setup") from err
    except subprocess.CalledProcessError as err:
        raise BuildError(f"`go env GOVERSION` failed: {err.stderr.strip()}") from err
    return out


def _run_go(args: list[str], *, cwd: Path, what: str) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed (go {' '.join(args)}):\n{proc.stderr.strip()[-4000:]}")
    return proc.stdout


def ensure_binaries(
    version: str = K8S_VERSION,
    *,
    cache_root: Path | None = None,
    progress: Progress = print,
) -> ControlPlaneBinaries:
    """Return the cached binaries for `version`, building them first if they are missing."""
    root = cache_root if cache_root is not None else default_cache_root()
    key_dir = root / "control-plane" / f"{version}-{go_version()}"
    binaries = ControlPlaneBinaries(version=version, bin_dir=key_dir / "bin")
    stamp = key_dir / "STAMP.json"
    if stamp.is_file() and all(p.is_file() for p in binaries.all_paths()):
        return binaries

    started = time.monotonic()
    progress(f"building the Kubernetes {version} control plane and etcd from Go modules")
    progress(f"  cache: {key_dir} (first build takes several minutes; later runs reuse it)")
    src = key_dir / "src"
    src.mkdir(parents=True, exist_ok=True)
    info = json.loads(
        _run_go(
            ["mod", "download", "-json", f"k8s.io/kubernetes@{version}"],
            cwd=src,
            what=f"downloading k8s.io/kubernetes@{version}",
        )
    )
    kubernetes_go_mod = Path(info["GoMod"]).read_text()
    write_atomic(
        src / "go.mod",
        render_wrapper_go_mod(k8s_version=version, kubernetes_go_mod=kubernetes_go_mod).encode(),
    )
    write_atomic(src / "tools.go", render_tools_go().encode())
    progress("  resolving modules (go mod tidy)")
    _run_go(["mod", "tidy"], cwd=src, what="resolving the wrapper module")

    packages = [ETCD_PACKAGE, *K8S_COMMANDS.values()]
    total = len(_run_go(["list", "-deps", *packages], cwd=src, what="listing packages").split())
    tmp_bin = key_dir / "bin.tmp"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    tmp_bin.mkdir()
    _go_build_with_progress(
        ["build", "-v", "-ldflags", version_ldflags(version), "-o", f"{tmp_bin}/", *packages],
        cwd=src,
        total_packages=total,
        progress=progress,
    )
    (tmp_bin / ETCD_BUILT_NAME).rename(tmp_bin / "etcd")
    old = key_dir / "bin.old"
    shutil.rmtree(old, ignore_errors=True)
    if binaries.bin_dir.exists():
        binaries.bin_dir.rename(old)
    tmp_bin.rename(binaries.bin_dir)
    shutil.rmtree(old, ignore_errors=True)
    write_atomic(stamp, json.dumps({"version": version, "go": go_version()}).encode())
    progress(f"  built in {time.monotonic() - started:.0f} s -> {binaries.bin_dir}")
    return binaries


def _go_build_with_progress(
    args: list[str],
    *,
    cwd: Path,
    total_packages: int,
    progress: Progress,
    env: Mapping[str, str] | None = None,
) -> None:
    """Run `go build -v` (or `install -v`), turning its one-line-per-package output into progress.

    `total_packages` 0 means unknown: progress then counts packages without a percentage.
    """
    proc = subprocess.Popen(
        ["go", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(env) if env is not None else None,
    )
    assert proc.stdout is not None
    compiled = 0
    tail: list[str] = []
    last_report = 0.0
    for line in proc.stdout:
        line = line.rstrip()
        tail = [*tail[-40:], line]
        if line and " " not in line:
            compiled += 1
        now = time.monotonic()
        if now - last_report >= 5:
            last_report = now
            if total_packages:
                pct = min(99, 100 * compiled // total_packages)
                progress(f"  compiling: {compiled} of ~{total_packages} packages ({pct}%)")
            else:
                progress(f"  compiling: {compiled} packages so far")
    if proc.wait() != 0:
        raise BuildError(f"go {args[0]} failed:\n" + "\n".join(tail))


# ---- single Go tools (no replace directives, so `go install pkg@version` works) ----

HELM_VERSION = "v3.22.0"

GO_TOOLS: Mapping[str, tuple[str, str, str]] = {
    # name: (package, version, ldflags)
    # v0.9.0 is built against k8s.io v0.36 (client-go within one minor of v1.37's apiserver)
    "metrics-server": (
        "sigs.k8s.io/metrics-server/cmd/metrics-server",
        "v0.9.0",
        "-s -w -X k8s.io/client-go/pkg/version.gitVersion=v0.9.0"
        " -X k8s.io/client-go/pkg/version.gitTreeState=clean",
    ),
    "crictl": (
        "sigs.k8s.io/cri-tools/cmd/crictl",
        "v1.37.0",
        "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=v1.37.0",
    ),
    # helm v3 (the chart in helm/ is linted, rendered and installed with it); its go.mod
    # has no replace directives, so `go install` builds it as released.
    "helm": (
        "helm.sh/helm/v3/cmd/helm",
        HELM_VERSION,
        f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"
        + " -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        # The Kubernetes release `helm template`/`lint` assume without a cluster (helm's
        # Makefile stamps the k8s.io modules' version; ours is the release we pin).
        + "".join(
            f" -X helm.sh/helm/v3/pkg/{pkg}.k8sVersion{part}={value}"
            for pkg in ("chartutil", "lint/rules")
            for part, value in zip(("Major", "Minor"), K8S_VERSION[1:].split(".")[:2], strict=True)
        ),
    ),
}


def ensure_go_tool(
    name: str, *, cache_root: Path | None = None, progress: Progress = print
) -> Path:
    """Build (once) and return the path of a Go tool from GO_TOOLS, cached by version."""
    package, version, ldflags = GO_TOOLS[name]
    root = cache_root if cache_root is not None else default_cache_root()
    key_dir = root / "tools" / f"{name}-{version}-{go_version()}"
    binary = key_dir / name
    if binary.is_file():
        return binary
    progress(f"building {name} {version} from its Go module (once; cached in {key_dir})")
    tmp = key_dir.with_name(key_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    try:
        _go_build_with_progress(
            ["install", "-v", "-ldflags", ldflags, f"{package}@{version}"],
            cwd=tmp,
            total_packages=0,
            progress=progress,
            env={**os.environ, "GOBIN": str(tmp)},
        )
    except BuildError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(f"building {name} {version} failed: {err}") from err
    progress(f"  built {name} in {time.monotonic() - started:.0f} s")
    shutil.rmtree(key_dir, ignore_errors=True)
    tmp.rename(key_dir)
    return binary

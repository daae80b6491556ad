"""A cgroup2-only Linux guest under QEMU software emulation, for tests that need cgroup v2.

This machine has a v1 (hybrid) cgroup layout and nested KVM does not work, so the v2
driver is tested in a guest kernel run by `qemu-system-x86_64 -accel tcg`:

    host                                   guest (Debian's cloud kernel, cgroup_no_v1=all)
    ────                                   ─────
    ~/.cache/kubelet-py/guest/<key>/       vda  root.img    debootstrap minbase + runc,
        vmlinuz, initramfs.cpio,                            conmon, util-linux, iproute2,
        root.img (ext4)                                     the kernel's modules (snapshot:
    ~/.cache/kubelet-py/guest/                              writes are thrown away)
        python-<key>/python.img (ext4)     vdb  scratch     rw, the job and its inputs
    per run, in a temp dir:                vdc  repo        ro, at the repository's host path
        scratch.img, repo.img              vdd  python      ro, the host's Python prefix at
                                                            its host path (same glibc)

Debian's cloud kernel has no 9p at all and its virtio drivers are modules, so there is
no directory sharing: the repository (its git-tracked and untracked-not-ignored files)
and the inputs are copied into small ext4 images made with `mke2fs -d` for each run, and
the host's whole Python prefix (interpreter, site-packages with every binary extension)
into a cached one, keyed by its contents' listing. The guest's Debian release is the
host's own, so the host interpreter's glibc is the guest's. A tiny initramfs (the
guest's static busybox and the virtio modules) mounts the root disk and switches to
`scripts/guest/init`, which mounts cgroup2 at /sys/fs/cgroup, the disks, runs the job,
prints `@@kubelet-py-guest-exit <nonce> <code>@@` on the serial console and powers off.

There is no network device in the guest (`-nic none`); the build talks only to the
Debian mirror this machine's apt is configured with (debootstrap).

    exit_code, console = run_in_guest(["python3", "-c", "print(1)"], timeout_s=120)

`python -m tests.support.guest build` builds (or finds) the images; `... run -- ARGV`
runs one command and streams the console.
"""

import contextlib
import ctypes
import fcntl
import hashlib
import inspect
import json
import lzma
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPE_DIR = REPO_ROOT / "scripts" / "guest"
RECIPE_VERSION = "1"  # bump when the build steps below change meaning
CACHE_ROOT = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kubelet-py" / "guest"
)
QEMU = "qemu-system-x86_64"
INITRAMFS_MODULES = ("virtio_pci", "virtio_blk")
GUEST_INIT = "/usr/local/sbin/kubelet-py-guest-init"
JOB_DIR = ".kubelet-py-job"
GUEST_INPUTS = "/scratch/inputs"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KERNEL_ARGS = (
    "console=ttyS0",
    "panic=-1",  # a dead init reboots at once, and -no-reboot turns that into an exit
    "cgroup_no_v1=all",
    "quiet",
    "loglevel=3",
    "random.trust_cpu=on",
    "rdinit=/init",
)
MARKER = re.compile(r"@@kubelet-py-guest-exit (\S+) (-?\d+)@@")
TERMINAL_CODES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[c()][0-9A-B]?)|\r")

Progress = Callable[[str], None]


def _stderr_progress(message: str) -> None:
    print(f"[guest] {message}", file=sys.stderr, flush=True)


class GuestError(RuntimeError):
    """The guest could not be built or started; the message says which step and why."""


# -- what the build starts from ------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    version: str
    vmlinuz: Path
    modules: Path  # /lib/modules/<version>


def find_kernel(boot: Path = Path("/boot"), modules_root: Path = Path("/lib/modules")) -> Kernel:
    """The newest installed Debian cloud kernel (`apt-get install linux-image-cloud-amd64`)."""
    found = []
    for vmlinuz in boot.glob("vmlinuz-*-cloud-amd64"):
        version = vmlinuz.name.removeprefix("vmlinuz-")
        if (modules_root / version / "modules.dep").exists():
            found.append(Kernel(version, vmlinuz, modules_root / version))
    if not found:
        raise GuestError(
            "no Debian cloud kernel with modules in /boot and /lib/modules: "
            "apt-get install linux-image-cloud-amd64"
        )
    return max(found, key=lambda k: _version_key(k.version))


def _version_key(version: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", version)]


def host_suite() -> str:
    """The host's Debian codename: the guest uses the same release (and glibc)."""
    fields = _os_release()
    suite = fields.get("VERSION_CODENAME", "")
    if fields.get("ID") != "debian" or not suite:
        raise GuestError(f"the guest image is built with debootstrap on Debian, not {fields}")
    return suite


def _os_release() -> dict[str, str]:
    out = {}
    for line in Path("/etc/os-release").read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value.strip().strip('"')
    return out


def debian_mirror(suite: str, sources: Path = Path("/etc/apt")) -> str:
    """The Debian mirror apt uses for `suite` (deb822 `.sources` or one-line `.list`)."""
    files = [sources / "sources.list"]
    for pattern in ("*.sources", "*.list"):
        files += sorted((sources / "sources.list.d").glob(pattern))
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if (
                    suite in fields.get("suites", "").split()
                    and "deb" in fields.get("types", "deb").split()
                ):
                    uri = fields.get("uris", "").split()
                    if uri and "security" not in uri[0]:
                        return uri[0]
        else:
            for line in text.splitlines():
                parts = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                is_deb = len(parts) >= 3 and parts[0] == "deb"
                if is_deb and parts[2] == suite and "security" not in parts[1]:
                    return parts[1]
    raise GuestError(f"no Debian mirror for {suite} in {sources}/sources.list*")


def guest_packages() -> list[str]:
    lines = (RECIPE_DIR / "packages.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def recipe_hash() -> str:
    """sha256 over the recipe files (scripts/guest) and the code below that builds from them."""
    digest = hashlib.sha256(f"recipe {RECIPE_VERSION}\n".encode())
    for name in ("packages.txt", "init", "initramfs-init"):
        digest.update(name.encode() + b"\0" + (RECIPE_DIR / name).read_bytes() + b"\0")
    for fn in (_build_image, build_initramfs, _cpio_newc, module_closure, make_ext4):
        digest.update(inspect.getsource(fn).encode())
    digest.update(repr(INITRAMFS_MODULES).encode())
    return digest.hexdigest()


def image_key(kernel: Kernel, suite: str) -> str:
    return f"{kernel.version}-{suite}-{recipe_hash()[:16]}"


# -- cache plumbing ------------------------------------------------------------------


@contextlib.contextmanager
def _cache_lock() -> Iterator[None]:
    """One builder at a time (e.g. pytest-xdist workers); readers of finished dirs need none."""
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    with (CACHE_ROOT / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _drop_stale_builds() -> None:
    """Remove half-built dirs of killed builds (called under the lock: no build is live)."""
    for stale in CACHE_ROOT.glob(".build-*"):
        shutil.rmtree(stale, ignore_errors=True)


def _publish(build_dir: Path, final: Path) -> None:
    """Atomically move a complete build into place."""
    os.rename(build_dir, final)


def _run(argv: Sequence[str], *, what: str, log: Path | None = None, **kw: object) -> None:
    """Run a build tool; on failure raise GuestError with its output's tail."""
    if log is not None:
        with log.open("ab") as out:
            proc = subprocess.run(
                list(argv), stdout=out, stderr=subprocess.STDOUT, check=False, **kw
            )  # type: ignore[call-overload]
        tail = log.read_text(errors="replace")[-3000:] if proc.returncode else ""
    else:
        proc = subprocess.run(list(argv), capture_output=True, check=False, **kw)  # type: ignore[call-overload]
        tail = (proc.stdout + proc.stderr).decode(errors="replace")[-3000:]
    if proc.returncode != 0:
        raise GuestError(f"{what}: {' '.join(argv)} exited {proc.returncode}:\n{tail}")


def _tree_bytes(top: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def make_ext4(tree: Path, image: Path, *, label: str, extra_mb: int = 256) -> None:
    """An ext4 image of `tree` (sparse file; sized to the tree plus `extra_mb`)."""
    size = int(_tree_bytes(tree) * 1.25) + extra_mb * 1024 * 1024
    size = (size // (1024 * 1024) + 1) * 1024 * 1024
    with image.open("wb") as out:
        out.truncate(size)
    _run(
        ["mke2fs", "-q", "-F", "-t", "ext4", "-L", label, "-E", "root_owner=0:0",
         "-d", str(tree), str(image)],
        what=f"making {image.name}",
    )  # fmt: skip


# -- the initramfs -------------------------------------------------------------------


def module_closure(modules_dir: Path, names: Sequence[str]) -> list[str]:
    """Relative paths of `names` and their dependencies, dependencies first (modules.dep)."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        base = Path(path).name.split(".ko")[0].replace("-", "_")
        by_name[base] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in names:
        if name not in by_name:
            raise GuestError(f"module {name} not in {modules_dir}/modules.dep (built in?)")
        visit(by_name[name])
    return order


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.zst"):
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    if path.name.endswith(".ko.gz"):
        import gzip

        return gzip.decompress(data)
    return data


def _cpio_newc(entries: Sequence[tuple[str, int, bytes]]) -> bytes:
    """A `newc` cpio archive of (name, mode, data); directories have empty data."""
    out = bytearray()
    ino = 1
    for name, mode, data in [*entries, ("TRAILER!!!", 0, b"")]:
        encoded = name.encode() + b"\0"
        nlink = 2 if mode & 0o040000 else 1
        fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
        ino += 1
    return bytes(out)


def build_initramfs(kernel: Kernel, busybox: Path, target: Path) -> None:
    """/init (scripts/guest/initramfs-init), a static busybox and the virtio modules."""
    mods = module_closure(kernel.modules, INITRAMFS_MODULES)
    entries: list[tuple[str, int, bytes]] = [
        (d, 0o040755, b"") for d in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules")
    ]
    entries.append(("bin/busybox", 0o100755, busybox.read_bytes()))
    entries.append(("init", 0o100755, (RECIPE_DIR / "initramfs-init").read_bytes()))
    order = []
    for rel in mods:
        name = Path(rel).name.split(".ko")[0] + ".ko"
        entries.append((f"lib/modules/{name}", 0o100644, _module_bytes(kernel.modules / rel)))
        order.append(name)
    entries.append(("modules.order", 0o100644, ("\n".join(order) + "\n").encode()))
    target.write_bytes(_cpio_newc(entries))


# -- the root image ------------------------------------------------------------------


@dataclass(frozen=True)
class GuestImage:
    directory: Path
    kernel_version: str

    @property
    def vmlinuz(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initramfs(self) -> Path:
        return self.directory / "initramfs.cpio"

    @property
    def root(self) -> Path:
        return self.directory / "root.img"


def ensure_image(*, progress: Progress = _stderr_progress) -> GuestImage:
    """The cached guest image for the installed cloud kernel and this recipe; built if new."""
    kernel = find_kernel()
    suite = host_suite()
    key = image_key(kernel, suite)
    for tool, package in (("debootstrap", "debootstrap"), ("mke2fs", "e2fsprogs")):
        if shutil.which(tool) is None:
            raise GuestError(f"{tool} not found: apt-get install {package}")
    final = CACHE_ROOT / key
    if (final / "manifest.json").exists():
        return GuestImage(final, kernel.version)
    with _cache_lock():
        if (final / "manifest.json").exists():
            return GuestImage(final, kernel.version)
        _drop_stale_builds()
        start = time.monotonic()
        progress(f"building the guest image {key} (once; cached in {CACHE_ROOT})")
        build = CACHE_ROOT / f".build-{key}-{os.getpid()}"
        build.mkdir(parents=True)
        try:
            _build_image(build, kernel, suite, progress)
            (build / "manifest.json").write_text(
                json.dumps(
                    {
                        "key": key,
                        "kernel": kernel.version,
                        "suite": suite,
                        "packages": guest_packages(),
                        "recipe_sha256": recipe_hash(),
                        "build_seconds": round(time.monotonic() - start, 1),
                    },
                    indent=2,
                )
            )
            _publish(build, final)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        for old in CACHE_ROOT.iterdir():
            if old.is_dir() and old != final and (old / "manifest.json").exists():
                progress(f"removing the superseded guest image {old.name}")
                shutil.rmtree(old, ignore_errors=True)
        progress(f"guest image ready in {time.monotonic() - start:.0f} s: {final}")
        return GuestImage(final, kernel.version)


def _build_image(build: Path, kernel: Kernel, suite: str, progress: Progress) -> None:
    tree = build / "tree"
    mirror = debian_mirror(suite)
    packages = guest_packages()
    log = build / "debootstrap.log"
    progress(f"debootstrap --variant=minbase {suite} from {mirror} (+{', '.join(packages)})")
    t0 = time.monotonic()
    _run(
        ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", suite,
         str(tree), mirror],
        what="debootstrap of the guest root", log=log,
    )  # fmt: skip
    progress(f"debootstrap done in {time.monotonic() - t0:.0f} s; adding kernel modules and init")
    shutil.copytree(
        kernel.modules,
        tree / "lib" / "modules" / kernel.version,
        symlinks=True,
        ignore=shutil.ignore_patterns("build", "source"),
    )
    init = tree / GUEST_INIT.lstrip("/")
    init.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RECIPE_DIR / "init", init)
    init.chmod(0o755)
    (tree / "scratch").mkdir(exist_ok=True)
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (tree / junk).glob("*"):
            if path.is_file():
                path.unlink()
    (tree / "etc" / "hostname").write_text("kubelet-py-guest\n")
    progress("making root.img (mke2fs -d) and the initramfs")
    make_ext4(tree, build / "root.img", label="kp-guest-root", extra_mb=512)
    busybox = tree / "bin" / "busybox"
    if not busybox.exists():
        raise GuestError("busybox-static is missing from the guest tree")
    build_initramfs(kernel, busybox, build / "initramfs.cpio")
    shutil.copyfile(kernel.vmlinuz, build / "vmlinuz")
    shutil.rmtree(tree)


# -- the host's Python, as a disk ----------------------------------------------------


@dataclass(frozen=True)
class PythonImage:
    image: Path
    prefix: Path  # where it is mounted in the guest: the same path as on the host
    executable: Path


def python_prefix() -> Path:
    """The prefix holding this interpreter and its site-packages (no virtualenvs)."""
    if sys.prefix != sys.base_prefix:
        raise GuestError(
            f"a virtualenv ({sys.prefix}) is not supported: run the tests with the "
            f"base interpreter {sys.base_prefix}"
        )
    return Path(sys.base_prefix).resolve()


def python_key(prefix: Path) -> str:
    """A hash of what the prefix holds: every entry of its lib dirs and bin, with mtimes."""
    digest = hashlib.sha256(f"{prefix}\n{sys.version}\n".encode())
    for top in (prefix / "bin", *sorted((prefix / "lib").glob("python3*/site-packages"))):
        for entry in sorted(os.scandir(top), key=lambda e: e.name):
            st = entry.stat(follow_symlinks=False)
            digest.update(f"{top}/{entry.name} {st.st_mtime_ns} {st.st_size}\n".encode())
    return digest.hexdigest()[:16]


def ensure_python_image(*, progress: Progress = _stderr_progress) -> PythonImage:
    prefix = python_prefix()
    key = python_key(prefix)
    final = CACHE_ROOT / f"python-{key}"
    executable = Path(sys.executable)
    if (final / "python.img").exists():
        return PythonImage(final / "python.img", prefix, executable)
    with _cache_lock():
        if not (final / "python.img").exists():
            _drop_stale_builds()
            start = time.monotonic()
            progress(f"copying the Python prefix {prefix} into an ext4 image (python-{key})")
            build = CACHE_ROOT / f".build-python-{key}-{os.getpid()}"
            build.mkdir(parents=True)
            try:
                make_ext4(prefix, build / "python.img", label="kp-python", extra_mb=64)
                _publish(build, final)
            finally:
                shutil.rmtree(build, ignore_errors=True)
            for old in CACHE_ROOT.glob("python-*"):
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
            progress(f"Python image ready in {time.monotonic() - start:.0f} s")
    return PythonImage(final / "python.img", prefix, executable)


# -- one run -------------------------------------------------------------------------


def repo_files(repo: Path) -> list[str]:
    """The repository's files as git sees them: tracked plus untracked-not-ignored."""
    out = subprocess.run(
        ["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise GuestError(f"git ls-files in {repo} failed: {out.stderr.decode(errors='replace')}")
    return [p for p in out.stdout.decode().split("\0") if p]


def _stage_repo(repo: Path, target: Path) -> None:
    for rel in repo_files(repo):
        src = repo / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the work tree
        dst = target / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def _copy_input(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, symlinks=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _job_files(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    nonce: str,
    repo: Path,
    python: PythonImage,
    limit_s: int,
) -> tuple[str, str]:
    """(env, cmd): what the guest init sources, and the shell script it runs.

    The command gets SIGKILL after `limit_s` inside the guest too, so even a qemu whose
    host-side watcher died powers off by itself."""
    job_env = (
        f"KP_NONCE={shlex.quote(nonce)}\n"
        f"KP_REPO={shlex.quote(str(repo))}\n"
        f"KP_PYTHON_PREFIX={shlex.quote(str(python.prefix))}\n"
    )
    exports = {
        "PATH": f"{python.executable.parent}:{GUEST_PATH}",
        "PYTHONPATH": str(repo),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": "/scratch/tmp",
        "KUBELET_PY_GUEST": "1",
        "KUBELET_PY_GUEST_INPUTS": GUEST_INPUTS,
        **env,
    }
    lines = ["set -e"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in exports.items()]
    lines.append(f"exec timeout -s KILL {limit_s} " + shlex.join(argv))
    return job_env, "\n".join(lines) + "\n"


def qemu_argv(
    image: GuestImage, *, disks: Sequence[tuple[Path, bool]], memory_mb: int, cpus: int
) -> list[str]:
    """The qemu command line: software emulation, serial console only, no network."""
    argv = [
        QEMU, "-accel", "tcg", "-cpu", "max", "-m", str(memory_mb), "-smp", str(cpus),
        "-nographic", "-no-reboot", "-nic", "none",
        "-kernel", str(image.vmlinuz), "-initrd", str(image.initramfs),
        "-append", " ".join(KERNEL_ARGS),
        "-drive", f"file={image.root},format=raw,if=virtio,snapshot=on",
    ]  # fmt: skip
    for path, readonly in disks:
        argv += [
            "-drive",
            f"file={path},format=raw,if=virtio" + (",readonly=on" if readonly else ""),
        ]
    return argv


def run_in_guest(
    argv: Sequence[str],
    *,
    timeout_s: float,
    inputs: Mapping[str, Path] | None = None,
    env: Mapping[str, str] | None = None,
    console: Progress | None = None,
    progress: Progress = _stderr_progress,
    memory_mb: int = 2048,
    cpus: int = 2,
    repo: Path = REPO_ROOT,
    scratch_mb: int = 2048,
) -> tuple[int | None, str]:
    """Boot the guest, run `argv` in the repository, return (exit code, console output).

    The exit code is None when the guest never reported one (it crashed, or the timeout
    killed qemu; the console then ends with a note saying so). `inputs` are copied to
    `/scratch/inputs/<name>` (env KUBELET_PY_GUEST_INPUTS); `console` gets each console
    line as it arrives. The command runs as root in the root cgroup, with the host's
    Python first on PATH and the repository on PYTHONPATH; TMPDIR is on the scratch disk.
    """
    if shutil.which(QEMU) is None:
        raise GuestError(f"{QEMU} not found: apt-get install qemu-system-x86")
    image = ensure_image(progress=progress)
    python = ensure_python_image(progress=progress)
    nonce = secrets.token_hex(8)
    with tempfile.TemporaryDirectory(prefix="kubelet-py-guest-") as tmp:
        work = Path(tmp)
        scratch_tree = work / "scratch"
        (scratch_tree / JOB_DIR).mkdir(parents=True)
        (scratch_tree / "inputs").mkdir()
        for name, src in (inputs or {}).items():
            _copy_input(src, scratch_tree / "inputs" / name)
        limit_s = int(max(10.0, timeout_s - 30.0))
        job_env, cmd = _job_files(
            argv, env or {}, nonce=nonce, repo=repo, python=python, limit_s=limit_s
        )
        (scratch_tree / JOB_DIR / "env").write_text(job_env)
        (scratch_tree / JOB_DIR / "cmd").write_text(cmd)
        repo_tree = work / "repo"
        repo_tree.mkdir()
        _stage_repo(repo, repo_tree)
        make_ext4(scratch_tree, work / "scratch.img", label="kp-scratch", extra_mb=scratch_mb)
        make_ext4(repo_tree, work / "repo.img", label="kp-repo", extra_mb=16)
        shutil.rmtree(scratch_tree)
        shutil.rmtree(repo_tree)
        disks = [(work / "scratch.img", False), (work / "repo.img", True), (python.image, True)]
        cmdline = qemu_argv(image, disks=disks, memory_mb=memory_mb, cpus=cpus)
        return _run_qemu(cmdline, work=work, nonce=nonce, timeout_s=timeout_s, console=console)


def _run_qemu(
    cmdline: list[str], *, work: Path, nonce: str, timeout_s: float, console: Progress | None
) -> tuple[int | None, str]:
    chunks: list[bytes] = []
    env = dict(os.environ, TMPDIR=str(work))  # qemu's snapshot=on overlay lands in `work`
    start = time.monotonic()
    proc = subprocess.Popen(
        cmdline, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=env, start_new_session=True, preexec_fn=_die_with_parent,
    )  # fmt: skip

    def pump() -> None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        pending = ""
        for raw in iter(lambda: os.read(fd, 65536), b""):
            chunks.append(raw)
            if console is not None:
                pending += raw.decode(errors="replace")
                *lines, pending = pending.split("\n")
                for line in lines:
                    console(_clean(line))
        if console is not None and pending:
            console(_clean(pending))

    reader = threading.Thread(target=pump, name="guest-console", daemon=True)
    reader.start()
    note = ""
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        note = f"\n[guest.py] timed out after {timeout_s:.0f} s: qemu (pid {proc.pid}) killed\n"
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        reader.join(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    output = _clean(b"".join(chunks).decode(errors="replace"))
    if not note and proc.returncode != 0:
        note = f"\n[guest.py] qemu exited with {proc.returncode}\n"
    output += note + f"[guest.py] guest ran {time.monotonic() - start:.1f} s\n"
    code = None
    for match in MARKER.finditer(output):
        if match.group(1) == nonce:
            code = int(match.group(2))
    return code, output


def _die_with_parent() -> None:
    """In the forked child: SIGKILL when the thread that started qemu dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def _clean(text: str) -> str:
    """Console text without carriage returns and the firmware's terminal control codes."""
    return TERMINAL_CODES.sub("", text)


# -- command line --------------------------------------------------------------------


def main(args: Sequence[str]) -> int:
    if args[:1] == ["build"]:
        image = ensure_image()
        python = ensure_python_image()
        print(f"{image.directory}\n{python.image}")
        return 0
    if args[:1] == ["run"]:
        rest = list(args[1:])
        if rest[:1] == ["--"]:
            rest = rest[1:]
        code, _ = run_in_guest(
            rest or ["sh", "-c", "cat /proc/cmdline; cat /sys/fs/cgroup/cgroup.controllers"],
            timeout_s=float(os.environ.get("KUBELET_PY_GUEST_TIMEOUT", "600")),
            console=lambda line: print(line, flush=True),
        )
        return 255 if code is None else code
    print("usage: python -m tests.support.guest build | run [-- ARGV...]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

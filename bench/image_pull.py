"""How fast, and in how much memory, the image service pulls a large image; and whether a
second image that shares layers with the first fetches only what it lacks.

Run as root from the repository root:

    python3 bench/image_pull.py [--runs N] [--size-mb MB] [--layers N] [--extra-mb MB]
                                [--compressible] [--image-cache DIR] [--profile]

What it sets up (all under one temp dir, removed at the end, also on Ctrl-C or an error):

- a real registry (`tests.support.registry.Registry`: Debian's docker-registry, plain HTTP,
  127.0.0.1 only);
- image 1, `large/<MB>mb`: `ImageBuilder.large(MB, layers=N)`, i.e. busybox plus N layers of
  random files, built by umoci and pushed by skopeo. Random data does not compress, so gzip
  keeps it in stored blocks and "decompressing" it is a copy: this flatters whoever spends
  most on inflate. `--compressible` builds the same shape from files that gzip to about half
  (`compressible/<MB>mb`, see `build_compressible`), so every byte is really inflated;
- image 2, `large-plus/<MB>mb` (or `compressible-plus/<MB>mb`): image 1's layers verbatim
  plus one small extra layer of `--extra-mb` random bytes. ImageBuilder cannot extend an
  image, so it is built here: GNU tar makes the extra layer, `umoci raw add-layer` appends
  it to a copy of image 1's tag (umoci gzips it and updates the config's diff IDs), skopeo
  pushes it with `--preserve-digests`. The bench checks that its manifest lists image 1's
  layer blobs first, unchanged.

What it measures, each `--runs` times with a fresh, empty store each run:

(a) ours: `python3 -m kubelet_py images --root <fresh> --plain-http <host> pull --quiet
    <image 1>` as a subprocess: wall time, and peak RSS (GNU time's "%M", the command's
    `ru_maxrss` in KiB; see `measure` for why not our own `os.wait4`);
(b) the anchor: `skopeo copy --src-tls-verify=false docker://<image 1> oci:<fresh>:tag`, then
    `umoci unpack --image <fresh>:tag <bundle>` as root: wall time of both together, peak RSS
    the larger of the two;
(c) ours pulling image 2 into the store that (a) just filled: wall time, and bytes
    downloaded. Downloads are counted from the registry's access log (bytes written per
    GET, from the lines the run added), and cross-checked against the blobs that appeared
    in the content store; that target counts as met only if the extra layer and the config
    were the only blobs fetched, in every run.

Page cache: the registry's blobs were just pushed, so both sides read them warm. Runs go
ours, anchor, ours, anchor, ... so neither gets a systematically warmer cache, and `sync`
runs before every measured command so one side's dirty pages are not written back on the
other side's clock. What ours and the anchor write is deleted after each run (not timed).

Output: a table (rows ours / skopeo+umoci / ours second image; columns median, min and max
wall seconds, peak RSS MiB over all runs, bytes downloaded per pull), the phases of the
anchor, CPU seconds of each side, our RSS floor (`images ls` on an empty store: interpreter
plus imports), and the issue's targets with whether each was met; the exit code is 0 only
if all were. `--profile` adds one unmeasured pull of image 1 under py-spy (`pip install
py-spy`) and prints where our CPU time goes. `--image-cache DIR` keeps the built OCI
layouts in DIR so later invocations skip the build (about a minute for 300 MiB).

Tools: docker-registry, skopeo, umoci, GNU tar, GNU time (`/usr/bin/time`, Debian package
`time`); py-spy only for `--profile`.
"""

import argparse
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python3 bench/image_pull.py` puts only bench/ on the path
    sys.path.insert(0, str(REPO))

from tests.support.images import (  # noqa: E402
    ImageBuilder,
    LayoutImage,
    PushedImage,
    push,
    run_tool,
    skopeo_env,
    skopeo_global_args,
)
from tests.support.registry import Registry  # noqa: E402

MIB = 1 << 20
RSS_TARGET_MIB = 100.0
EXTRA_TAG_SUFFIX = "plus"

# The access log's combined-format line: "GET /v2/<repo>/<kind>/<ref> HTTP/1.1" 200 <bytes>
ACCESS_LINE = re.compile(
    r'"GET /v2/(?P<repo>.+?)/(?P<kind>blobs|manifests)/(?P<ref>\S+) HTTP/[\d.]+" '
    r"(?P<status>\d{3}) (?P<bytes>\d+|-)"
)


# -- running and measuring one command -----------------------------------------------------


@dataclass(frozen=True)
class Sample:
    wall_s: float
    maxrss_kib: int
    cpu_s: float  # user + system, of the command and what it waited for


class ChildFailed(RuntimeError):
    """A measured command exited non-zero; the message has its argv and output tail."""


_CURRENT_CHILD: list[subprocess.Popen[bytes]] = []  # the one child a Ctrl-C must stop


GNU_TIME = "/usr/bin/time"


def measure(argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None) -> Sample:
    """Run `argv` to completion under GNU time; its wall time and peak RSS in KiB.

    Why not our own `os.wait4(...).ru_maxrss`: on exec Linux folds the old address space's
    high-water mark into the process's maxrss, and a child forked (or vforked) from this
    bench starts out with our address space, so every child would report at least our own
    RSS (~50 MiB here once the test helpers are imported). `/usr/bin/time` forks the command
    from its own ~1 MiB process and reports that child's `ru_maxrss` (KiB) as `%M`, and its
    user and system CPU seconds as `%U %S`.

    The child gets its own session (process group), so a Ctrl-C reaches only us and
    `stop_current_child` ends exactly that group. Output goes to `log`."""
    os.sync()  # write back the previous run's dirty pages now, not on this run's clock
    rss_file = log.with_suffix(".maxrss")
    with log.open("wb") as out:
        start = time.monotonic()
        proc = subprocess.Popen(
            [GNU_TIME, "--format", "%M %U %S", "--output", str(rss_file), *argv],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
        _CURRENT_CHILD.append(proc)
        try:
            proc.wait()
            wall = time.monotonic() - start
        finally:
            _CURRENT_CHILD.remove(proc)
            _stop(proc)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise ChildFailed(f"{' '.join(argv)} exited {proc.returncode}:\n{tail}")
    maxrss, user, system = rss_file.read_text().split()[-3:]
    return Sample(wall_s=wall, maxrss_kib=int(maxrss), cpu_s=float(user) + float(system))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL, the process group we started (GNU time and the command under
    it; the group ID is the PID we got back), and reap it."""
    if proc.poll() is not None:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        break


def stop_current_child() -> None:
    for proc in list(_CURRENT_CHILD):
        _stop(proc)


# -- the registry's access log -------------------------------------------------------------


@dataclass
class Downloads:
    """What the registry served between two points of its log."""

    bytes_total: int = 0
    blobs: Counter[str] = field(default_factory=Counter)  # digest -> bytes served
    manifests: int = 0


class AccessLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        self.settle()
        return self.path.stat().st_size

    def settle(self, quiet_s: float = 0.2, timeout_s: float = 5.0) -> None:
        """Wait until the log stops growing: the registry logs a request after its response."""
        deadline = time.monotonic() + timeout_s
        size, since = self.path.stat().st_size, time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now_size = self.path.stat().st_size
            if now_size != size:
                size, since = now_size, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return

    def since(self, offset: int) -> Downloads:
        self.settle()
        with self.path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        out = Downloads()
        for match in ACCESS_LINE.finditer(text):
            if match["status"] not in ("200", "206") or match["bytes"] == "-":
                continue
            n = int(match["bytes"])
            out.bytes_total += n
            if match["kind"] == "blobs":
                out.blobs[match["ref"]] += n
            else:
                out.manifests += 1
        return out


# -- images ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    first: PushedImage
    second: PushedImage
    extra_layer: str  # digest of the one layer image 2 has and image 1 lacks
    second_config: str
    blob_bytes: int  # image 1: config + layers, as the manifest declares


def build_second(builder: ImageBuilder, base: LayoutImage, extra_mb: float) -> LayoutImage:
    """Image 1's tag copied, plus one layer of `extra_mb` MiB of random bytes (GNU tar +
    `umoci raw add-layer`); resumable like ImageBuilder's images (tag only when complete)."""
    tag = f"{base.tag}-{EXTRA_TAG_SUFFIX}{extra_mb:g}"
    done = ImageBuilder.tags(base.layout).get(tag)
    if done is not None:
        return LayoutImage(base.layout, tag, done[0], done[1])
    building = f"building-{tag}"
    if building in ImageBuilder.tags(base.layout):
        run_tool(["umoci", "rm", "--image", f"{base.layout}:{building}"])
    run_tool(["umoci", "tag", "--image", base.image_ref, building])
    stage = builder.work_dir / "extra-layer-stage"
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "data/extra").mkdir(parents=True)
    (stage / "data/extra/blob.bin").write_bytes(os.urandom(int(extra_mb * MIB)))
    layer_tar = builder.work_dir / "extra-layer.tar"
    run_tool(
        [
            "tar", "--create", "--file", str(layer_tar), "--format=pax",
            "--pax-option=delete=atime,delete=ctime", "--sort=name", "--numeric-owner",
            "--owner=0", "--group=0", "-C", str(stage), "data/extra",
        ]
    )  # fmt: skip
    run_tool(["umoci", "raw", "add-layer", "--image", f"{base.layout}:{building}", str(layer_tar)])
    layer_tar.unlink()
    shutil.rmtree(stage)
    run_tool(["umoci", "tag", "--image", f"{base.layout}:{building}", tag])
    run_tool(["umoci", "rm", "--image", f"{base.layout}:{building}"])
    found = ImageBuilder.tags(base.layout)[tag]
    return LayoutImage(base.layout, tag, found[0], found[1])


def build_compressible(builder: ImageBuilder, size_mb: int, layers: int) -> LayoutImage:
    """Like `ImageBuilder.large`, but files that compress: every 1 KiB is 512 random bytes
    and then 512 zero bytes. gzip (umoci's level) shrinks that to about 52 %, in dynamic
    Huffman blocks, so unpacking has to inflate every byte, as with real layers (random
    data is kept in stored blocks, which inflate as a copy). Built here with umoci the way
    `ImageBuilder._build_large` builds `large`; tag `compressible-<MB>x<layers>`."""
    layout = builder.layout
    tag = f"compressible-{size_mb}x{layers}"
    base = builder.busybox()
    done = ImageBuilder.tags(layout).get(tag)
    if done is not None:
        return LayoutImage(layout, tag, done[0], done[1])
    building = f"building-{tag}"
    if building in ImageBuilder.tags(layout):
        run_tool(["umoci", "rm", "--image", f"{layout}:{building}"])
    run_tool(["umoci", "tag", "--image", base.image_ref, building])
    ref = f"{layout}:{building}"
    bundle = builder.work_dir / "bundles" / tag
    shutil.rmtree(bundle, ignore_errors=True)
    bundle.parent.mkdir(parents=True, exist_ok=True)
    run_tool(["umoci", "unpack", "--image", ref, str(bundle)])
    rng = random.Random(size_mb * 1000 + layers)  # reproducible test data
    zeros = bytes(512)
    for n, layer_bytes in enumerate(_split(size_mb * MIB, layers)):
        layer_dir = bundle / "rootfs/data" / f"layer{n}"
        layer_dir.mkdir(parents=True)
        for i, file_bytes in enumerate(_split(layer_bytes, -(-layer_bytes // (8 * MIB)))):
            with (layer_dir / f"blob{i}.bin").open("wb") as out:
                left = file_bytes
                while left > 0:
                    chunk = b"".join(rng.randbytes(512) + zeros for _ in range(1024))
                    out.write(chunk[:left])
                    left -= len(chunk)
        run_tool(["umoci", "repack", "--refresh-bundle", "--image", ref, str(bundle)])
    shutil.rmtree(bundle)
    run_tool(["umoci", "tag", "--image", ref, tag])
    run_tool(["umoci", "rm", "--image", ref])
    found = ImageBuilder.tags(layout)[tag]
    return LayoutImage(layout, tag, found[0], found[1])


def _split(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal sizes (as tests.support.images splits)."""
    base, extra = divmod(total, max(1, parts))
    return [base + (1 if i < extra else 0) for i in range(max(1, parts))]


def prepare_images(
    registry: Registry,
    builder: ImageBuilder,
    *,
    size_mb: int,
    layers: int,
    extra_mb: float,
    compressible: bool,
) -> Images:
    if compressible:
        base = build_compressible(builder, size_mb, layers)
        name = "compressible"
    else:
        base = builder.large(size_mb, layers=layers)
        name = "large"
    tag = f"{size_mb}mb"
    first = push(
        registry, builder, base.skopeo_ref, name=name, tag=tag,
        layout=base.layout, layout_tag=base.tag, extra=["--preserve-digests"],
    )  # fmt: skip
    second_layout = build_second(builder, base, extra_mb)
    second = push(
        registry, builder, second_layout.skopeo_ref, name=f"{name}-plus", tag=tag,
        layout=second_layout.layout, layout_tag=second_layout.tag,
        extra=["--preserve-digests"],
    )  # fmt: skip
    m1, m2 = first.manifest_json(), second.manifest_json()
    layers1 = [d["digest"] for d in m1["layers"]]
    layers2 = [d["digest"] for d in m2["layers"]]
    if layers2[:-1] != layers1 or len(layers2) != len(layers1) + 1:
        raise RuntimeError(f"image 2 does not extend image 1: {layers1} vs {layers2}")
    blob_bytes = m1["config"]["size"] + sum(d["size"] for d in m1["layers"])
    return Images(first, second, layers2[-1], m2["config"]["digest"], blob_bytes)


# -- the two sides ------------------------------------------------------------------------


def ours_argv(root: Path, registry: Registry, reference: str) -> list[str]:
    return [
        sys.executable, "-m", "kubelet_py", "images", "--root", str(root),
        "--plain-http", registry.host, "pull", "--quiet", reference,
    ]  # fmt: skip


def blob_digests(root: Path) -> set[str]:
    """Digests in our content store under `root` (CLI root; images live in ROOT/images)."""
    blobs = root / "images/blobs/sha256"
    return {f"sha256:{p.name}" for p in blobs.iterdir()} if blobs.is_dir() else set()


@dataclass
class Results:
    ours: list[Sample] = field(default_factory=list)
    anchor: list[Sample] = field(default_factory=list)
    skopeo: list[Sample] = field(default_factory=list)
    umoci: list[Sample] = field(default_factory=list)
    second: list[Sample] = field(default_factory=list)
    ours_bytes: list[int] = field(default_factory=list)
    anchor_bytes: list[int] = field(default_factory=list)
    second_bytes: list[int] = field(default_factory=list)
    second_blobs: list[set[str]] = field(default_factory=list)  # fetched, per the log
    second_new_in_store: list[set[str]] = field(default_factory=list)
    floor: Sample | None = None


def run_ours(
    run_dir: Path, registry: Registry, log: AccessLog, images: Images, results: Results
) -> None:
    root = run_dir / "ours-root"
    mark = log.mark()
    results.ours.append(
        measure(ours_argv(root, registry, images.first.reference), log=run_dir / "ours.log")
    )
    got = log.since(mark)
    results.ours_bytes.append(got.bytes_total)
    before = blob_digests(root)
    mark = log.mark()
    results.second.append(
        measure(ours_argv(root, registry, images.second.reference), log=run_dir / "second.log")
    )
    got = log.since(mark)
    results.second_bytes.append(got.bytes_total)
    results.second_blobs.append(set(got.blobs))
    results.second_new_in_store.append(blob_digests(root) - before)
    remove_tree(root)


def run_anchor(
    run_dir: Path, registry: Registry, log: AccessLog, images: Images, results: Results
) -> None:
    tool_dir = run_dir / "skopeo"  # policy.json, registries.d, tmpdir: nothing from /etc
    layout, bundle = run_dir / "anchor-layout", run_dir / "anchor-bundle"
    copy_argv = [
        "skopeo", *skopeo_global_args(tool_dir), "copy", "--src-tls-verify=false",
        f"docker://{images.first.reference}", f"oci:{layout}:tag",
    ]  # fmt: skip
    unpack_argv = ["umoci", "unpack", "--image", f"{layout}:tag", str(bundle)]
    mark = log.mark()
    copy = measure(copy_argv, log=run_dir / "skopeo.log", env=skopeo_env(tool_dir))
    unpack = measure(unpack_argv, log=run_dir / "umoci.log")
    results.anchor_bytes.append(log.since(mark).bytes_total)
    results.skopeo.append(copy)
    results.umoci.append(unpack)
    results.anchor.append(
        Sample(
            copy.wall_s + unpack.wall_s,
            max(copy.maxrss_kib, unpack.maxrss_kib),
            copy.cpu_s + unpack.cpu_s,
        )
    )
    remove_tree(layout)
    remove_tree(bundle)


def remove_tree(path: Path) -> None:
    """rmtree that also gets through dirs whose mode (0o000 etc.) a layer set."""

    def fix(_func: object, failed: str, _exc: object) -> None:
        target = Path(failed)
        os.chmod(target.parent, 0o700)
        if target.is_dir() and not target.is_symlink():
            os.chmod(target, 0o700)
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)

    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path, onerror=fix)  # onexc is 3.12+; the project supports 3.11


# -- profile ------------------------------------------------------------------------------


def profile_ours(run_dir: Path, registry: Registry, images: Images) -> str:
    """One pull of image 1 under `py-spy record` (all threads, only samples where a thread
    was running, not idle waiting); returns a summary by leaf and by inclusive frame."""
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        return "py-spy not found: `pip install py-spy` for --profile"
    raw = run_dir / "profile.txt"
    argv = [
        py_spy, "record", "--format", "raw", "--rate", "200", "--threads",
        "--output", str(raw), "--", *ours_argv(run_dir / "profile-root", registry,
                                               images.first.reference),
    ]  # fmt: skip
    sample = measure(argv, log=run_dir / "profile.log")
    remove_tree(run_dir / "profile-root")
    return summarize_profile(raw, sample)


def summarize_profile(raw: Path, sample: Sample, top: int = 18) -> str:
    """py-spy's collapsed stacks ("thread;frame;...;leaf count") folded into two tables."""
    leaf: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        leaf[_short(frames[-1])] += count
        for name in {_short(f) for f in frames[1:]}:
            inclusive[name] += count
    lines = [
        f"profile: one pull of image 1 under py-spy ({sample.wall_s:.2f} s wall with the "
        f"sampler attached): {total} samples at 200 Hz of threads py-spy saw as busy; a "
        "thread waiting for the GIL counts too, so this exceeds the CPU seconds above",
        "  samples per thread:",
        *(f"    {n:7d}  {name}" for name, n in threads.most_common()),
        "  top leaf frames (where the samples were):",
        *(f"    {n:7d}  {100 * n / total:5.1f}%  {name}" for name, n in leaf.most_common(top)),
        "  top inclusive frames:",
        *(
            f"    {n:7d}  {100 * n / total:5.1f}%  {name}"
            for name, n in inclusive.most_common(top * 2)
        ),
    ]
    return "\n".join(lines)


def _short(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`; keeps frames comparable across lines."""
    match = re.match(r"(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$", frame)
    if match is None:
        return frame
    return f"{match['func']} ({Path(match['file']).name})"


# -- report -------------------------------------------------------------------------------


def _row(label: str, samples: Sequence[Sample], downloaded: Sequence[int]) -> str:
    walls = [s.wall_s for s in samples]
    rss = max(s.maxrss_kib for s in samples) / 1024
    got = sorted(set(downloaded))
    shown = f"{got[0]:,}" if len(got) == 1 else f"{min(got):,}..{max(got):,}"
    return (
        f"{label:<26}{statistics.median(walls):>10.2f}{min(walls):>8.2f}{max(walls):>8.2f}"
        f"{rss:>14.1f}{shown:>18}"
    )


def report(args: argparse.Namespace, images: Images, results: Results) -> bool:
    first, second = images.first, images.second
    n_layers = len(first.manifest_json()["layers"])
    data = (
        f"{args.size_mb} MiB of files that gzip to about half: every byte is inflated"
        if args.compressible
        else f"{args.size_mb} MiB of random files: gzip stores them, inflating is a copy"
    )
    extra = next(
        d["size"] for d in second.manifest_json()["layers"] if d["digest"] == images.extra_layer
    )
    print()
    print(
        f"image 1: {first.reference}  ({n_layers} layers, {images.blob_bytes / MIB:.1f} MiB of "
        f"config + layer blobs; {data})"
    )
    print(
        f"image 2: {second.reference}  (image 1's layers + 1 layer of {extra / MIB:.2f} MiB "
        f"gzipped, {images.extra_layer[:19]})"
    )
    print(
        f"{args.runs} runs, fresh empty store each; order per run: ours (image 1, then image 2 "
        "into the same store), then skopeo+umoci; registry blobs warm in the page cache for "
        "both; sync before every measured command"
    )
    print()
    print(
        f"{'':<26}{'median s':>10}{'min s':>8}{'max s':>8}{'peak RSS MiB':>14}"
        f"{'bytes downloaded':>18}"
    )
    print(_row("ours", results.ours, results.ours_bytes))
    print(_row("skopeo+umoci", results.anchor, results.anchor_bytes))
    print(_row("ours, second image", results.second, results.second_bytes))
    print()
    print("peak RSS is the largest over all runs; bytes downloaded = bytes the registry wrote")
    print("for the pull's GETs (manifests + blobs), from its access log")
    print(
        "anchor phases (median s / peak RSS MiB): skopeo copy "
        f"{statistics.median(s.wall_s for s in results.skopeo):.2f} / "
        f"{max(s.maxrss_kib for s in results.skopeo) / 1024:.1f}, umoci unpack "
        f"{statistics.median(s.wall_s for s in results.umoci):.2f} / "
        f"{max(s.maxrss_kib for s in results.umoci) / 1024:.1f}"
    )
    print(
        "CPU s (user + sys, median): ours "
        f"{statistics.median(s.cpu_s for s in results.ours):.2f}, skopeo+umoci "
        f"{statistics.median(s.cpu_s for s in results.anchor):.2f} (skopeo "
        f"{statistics.median(s.cpu_s for s in results.skopeo):.2f}, umoci "
        f"{statistics.median(s.cpu_s for s in results.umoci):.2f}), ours second image "
        f"{statistics.median(s.cpu_s for s in results.second):.2f}; this VM has "
        f"{os.cpu_count()} CPUs"
    )
    if results.floor is not None:
        print(
            f"our floor: `images ls` on an empty store takes {results.floor.wall_s:.2f} s and "
            f"{results.floor.maxrss_kib / 1024:.1f} MiB RSS (interpreter + imports)"
        )

    ours_med = statistics.median(s.wall_s for s in results.ours)
    anchor_med = statistics.median(s.wall_s for s in results.anchor)
    ours_rss = max(s.maxrss_kib for s in results.ours + results.second) / 1024
    wanted = {images.extra_layer, images.second_config}
    fetched_ok = all(b == wanted for b in results.second_blobs)
    store_ok = all(b == wanted | {second.digest} for b in results.second_new_in_store)
    targets = [
        (
            "ours is no slower than skopeo+umoci",
            ours_med <= anchor_med,
            f"median {ours_med:.2f} s vs {anchor_med:.2f} s ({ours_med / anchor_med:.2f}x)",
        ),
        (
            f"our peak RSS under {RSS_TARGET_MIB:.0f} MiB",
            ours_rss < RSS_TARGET_MIB,
            f"{ours_rss:.1f} MiB",
        ),
        (
            "second image pulls only what it lacks",
            fetched_ok and store_ok,
            "blobs fetched per run: "
            + "; ".join(
                ", ".join(sorted(_name(d, images) for d in b)) for b in results.second_blobs
            )
            + f"; new in store: manifest + config + extra layer = {store_ok}",
        ),
    ]
    print()
    print("targets (from the issue):")
    for text, met, detail in targets:
        print(f"  [{'met' if met else 'NOT MET'}] {text}: {detail}")
    return all(met for _, met, _ in targets)


def _name(digest: str, images: Images) -> str:
    if digest == images.extra_layer:
        return "extra layer"
    if digest == images.second_config:
        return "config"
    return digest[:19]


# -- main ---------------------------------------------------------------------------------


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP raise KeyboardInterrupt, so every cleanup below runs for them too."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=3, help="measured runs per row (default 3)")
    parser.add_argument("--size-mb", type=int, default=300, help="image 1 size (default 300)")
    parser.add_argument("--layers", type=int, default=4, help="image 1 data layers (default 4)")
    parser.add_argument(
        "--extra-mb", type=float, default=1.0, help="image 2's extra layer (default 1 MiB)"
    )
    parser.add_argument(
        "--image-cache",
        type=Path,
        help="build the OCI layouts here and keep them (reused by later runs); default: in "
        "the temp dir, removed at the end",
    )
    parser.add_argument(
        "--compressible",
        action="store_true",
        help="files that gzip to about half (see build_compressible) instead of random ones",
    )
    parser.add_argument(
        "--profile", action="store_true", help="add one pull of image 1 under py-spy"
    )
    args = parser.parse_args()
    if args.runs < 1 or args.size_mb < 1 or args.layers < 1 or args.extra_mb <= 0:
        parser.error("--runs, --size-mb and --layers must be >= 1, --extra-mb > 0")
    return args


def main() -> int:
    args = parse_args()
    if os.geteuid() != 0:
        print("run as root: umoci unpack and our layer unpack keep owners and devices")
        return 2
    for tool in ("skopeo", "umoci", "tar", GNU_TIME, "/usr/bin/docker-registry"):
        if shutil.which(tool) is None:
            print(f"missing tool: {tool}")
            return 2
    work = Path(tempfile.mkdtemp(prefix="bench-image-pull-"))
    registry = Registry(work / "registry")
    results = Results()
    ok = False
    try:
        with terminate_as_interrupt():
            registry.start()
            builder = ImageBuilder(args.image_cache or work / "images")
            t0 = time.monotonic()
            print(f"building and pushing images ({args.size_mb} MiB) ...", flush=True)
            images = prepare_images(
                registry,
                builder,
                size_mb=args.size_mb,
                layers=args.layers,
                extra_mb=args.extra_mb,
                compressible=args.compressible,
            )
            print(f"  ready in {time.monotonic() - t0:.1f} s", flush=True)
            log = AccessLog(registry.log_path)
            floor_root = work / "floor-root"
            results.floor = measure(
                [sys.executable, "-m", "kubelet_py", "images", "--root", str(floor_root), "ls"],
                log=work / "floor.log",
            )
            remove_tree(floor_root)
            for i in range(args.runs):
                run_dir = work / "runs" / str(i)
                run_dir.mkdir(parents=True)
                run_ours(run_dir, registry, log, images, results)
                run_anchor(run_dir, registry, log, images, results)
                print(
                    f"  run {i + 1}/{args.runs}: ours {results.ours[-1].wall_s:.2f} s "
                    f"({results.ours[-1].maxrss_kib / 1024:.0f} MiB), second "
                    f"{results.second[-1].wall_s:.2f} s, skopeo+umoci "
                    f"{results.anchor[-1].wall_s:.2f} s "
                    f"({results.anchor[-1].maxrss_kib / 1024:.0f} MiB)",
                    flush=True,
                )
                remove_tree(run_dir)
            ok = report(args, images, results)
            if args.profile:
                profile_dir = work / "profile"
                profile_dir.mkdir()
                print()
                print(profile_ours(profile_dir, registry, images))
    except KeyboardInterrupt:
        print("\ninterrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        stop_current_child()
        registry.stop()
        remove_tree(work)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

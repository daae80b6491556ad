"""`kubelet-py images …`: pull, list, remove, inspect and import images on this node.

A thin shell over `cri.images.ImageService`, the same code the runtime uses, so
what people see here is what pods get.
"""

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from cri.images import (
    Credentials,
    ImageError,
    ImageService,
    PullEvent,
    RegistryConfig,
    RegistryHost,
    parse_dockerconfigjson,
    parse_reference,
)

DEFAULT_ROOT = Path("/var/lib/kubelet-py")


def add_parser(commands: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    images = commands.add_parser(
        "images",
        help="pull, list, remove, inspect and import container images",
        description="Manage the images of this node's runtime (the CRI image service).",
    )
    images.add_argument(
        "--root",
        type=Path,
        default=DEFAULT_ROOT,
        help=f"kubelet-py's state directory (default {DEFAULT_ROOT}); images live in ROOT/images",
    )
    images.add_argument(
        "--plain-http",
        action="append",
        default=[],
        metavar="HOST",
        help="registry host that speaks plain HTTP (repeatable; off unless named)",
    )
    images.add_argument(
        "--ca-file",
        action="append",
        default=[],
        metavar="HOST=PATH",
        help="trust this CA bundle for a registry host (repeatable)",
    )
    images.add_argument(
        "--mirror",
        action="append",
        default=[],
        metavar="HOST=URL",
        help="try this mirror before the registry host (repeatable, tried in order)",
    )
    actions = images.add_subparsers(dest="images_command", metavar="<action>")
    actions.required = True
    pull = actions.add_parser("pull", help="pull an image (tag or digest) with progress")
    pull.add_argument("image")
    pull.add_argument("--creds", metavar="USER:PASSWORD", help="registry credentials")
    pull.add_argument(
        "--auth-file",
        type=Path,
        metavar="PATH",
        help="a dockerconfigjson file (what imagePullSecrets hold)",
    )
    pull.add_argument("--quiet", "-q", action="store_true", help="print only the image ID")
    actions.add_parser("ls", help="list images")
    rm = actions.add_parser("rm", help="remove images (and layers no other image needs)")
    rm.add_argument("image", nargs="+")
    inspect = actions.add_parser("inspect", help="print an image's record and config as JSON")
    inspect.add_argument("image")
    imp = actions.add_parser("import", help="import an OCI image layout or a docker save archive")
    imp.add_argument("path", type=Path)
    imp.add_argument("--name", help="name for an image the archive does not name")


def registry_config(args: argparse.Namespace) -> RegistryConfig:
    hosts: dict[str, dict[str, object]] = {}
    for host in args.plain_http:
        hosts.setdefault(host, {})["plain_http"] = True
    for item in args.ca_file:
        host, _, path = item.partition("=")
        hosts.setdefault(host, {})["ca_file"] = Path(path)
    for item in args.mirror:
        host, _, url = item.partition("=")
        entry = hosts.setdefault(host, {})
        entry["mirrors"] = (*entry.get("mirrors", ()), url)  # type: ignore[misc]
    return RegistryConfig(hosts={h: RegistryHost(**v) for h, v in hosts.items()})  # type: ignore[arg-type]


class _ProgressPrinter:
    """Per-layer lines for milestones, and a throttled total while bytes flow."""

    def __init__(self) -> None:
        self.layers: dict[str, tuple[int, int]] = {}
        self.last = 0.0
        self.tty = sys.stderr.isatty()

    def __call__(self, ev: PullEvent) -> None:
        short = ev.digest.removeprefix("sha256:")[:12]
        if ev.kind == "resolved":
            print(f"{ev.image}: resolved to {ev.digest}", file=sys.stderr)
        elif ev.kind == "exists":
            print(f"  {short}: already present", file=sys.stderr)
        elif ev.kind == "download":
            self.layers[ev.digest] = (ev.done_bytes, ev.total_bytes)
            now = time.monotonic()
            if now - self.last >= 0.5:
                self.last = now
                done = sum(d for d, _ in self.layers.values()) / 2**20
                total = sum(t for _, t in self.layers.values()) / 2**20
                end = "\r" if self.tty else "\n"
                print(f"  downloading {done:8.1f} / {total:.1f} MiB", end=end, file=sys.stderr)
        elif ev.kind == "downloaded":
            print(f"  {short}: downloaded {ev.total_bytes / 2**20:.1f} MiB", file=sys.stderr)
        elif ev.kind == "unpacked":
            print(f"  {short}: unpacked", file=sys.stderr)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1024
    return f"{n:.1f}GiB"


async def _run(args: argparse.Namespace) -> int:
    service = ImageService(args.root / "images", registry=registry_config(args))
    try:
        cmd = args.images_command
        if cmd == "pull":
            creds = None
            ref = parse_reference(args.image)
            if args.creds:
                user, _, password = args.creds.partition(":")
                creds = Credentials(username=user, password=password)
            elif args.auth_file:
                creds = parse_dockerconfigjson(args.auth_file.read_bytes()).get(ref.registry)
            started = time.monotonic()
            record = await service.pull(
                args.image, credentials=creds, progress=None if args.quiet else _ProgressPrinter()
            )
            if not args.quiet:
                print(f"pulled {ref} in {time.monotonic() - started:.1f} s", file=sys.stderr)
            print(record.id)
        elif cmd == "ls":
            rows = [("IMAGE", "TAG", "IMAGE ID", "SIZE")]
            for r in service.list_images():
                for name in r.repo_tags or (r.repo_digests[0].split("@")[0] + ":<none>",):
                    repo, _, tag = name.rpartition(":")
                    rows.append(
                        (repo, tag, r.id.removeprefix("sha256:")[:13], _human(r.size_bytes))
                    )
            widths = [max(len(row[i]) for row in rows) for i in range(4)]
            for row in rows:
                print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        elif cmd == "rm":
            for image in args.image:
                record = service.get(image)
                service.remove(image)
                print(f"removed {image} ({record.id})")
        elif cmd == "inspect":
            record = service.get(args.image)
            config = service.config(record.id)
            doc = {
                "record": asdict(record),
                "config": {
                    k: sorted(v) if isinstance(v, frozenset) else v
                    for k, v in asdict(config).items()
                },
                "lowerdirs": [str(p) for p in service.lowerdirs(record.id)],
            }
            print(json.dumps(doc, indent=2, default=str))
        elif cmd == "import":
            for record in await service.import_image(
                args.path, name=args.name, progress=_ProgressPrinter()
            ):
                print(f"imported {', '.join(record.repo_tags) or record.id} ({record.id})")
    except ImageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        await service.close()
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))

"""The image configuration (OCI config.json / Docker image JSON) as a typed object. Pure.

Also the rules that turn an image's ENTRYPOINT/CMD and a container's
command/args into the argv that runs:

    image ENTRYPOINT  image CMD   k8s command  k8s args   ->  argv
    [e]               [c]         -            -              e + c      (Docker's rule)
    [e]               [c]         [x]          -              x          (command replaces both)
    [e]               [c]         -            [a]            e + a      (args replace CMD only)
    [e]               [c]         [x]          [a]            x + a
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cri.images.digest import Digest, parse_digest
from cri.images.errors import ImageError, UnsupportedMediaTypeError


class NoCommandError(ImageError):
    """Neither the image nor the container says what to run."""


@dataclass(frozen=True)
class ImageConfig:
    architecture: str
    os: str
    diff_ids: tuple[Digest, ...]
    variant: str | None = None
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    exposed_ports: frozenset[str] = frozenset()
    volumes: frozenset[str] = frozenset()
    stop_signal: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    created: str | None = None

    def env_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.env:
            key, _, value = item.partition("=")
            out[key] = value
        return out


def _str_tuple(value: Any, *, name: str, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # Docker accepts a bare string in some old images
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UnsupportedMediaTypeError(f"{what}: config {name} is not a list of strings")
    return tuple(value)


def parse_image_config(data: bytes, *, what: str) -> ImageConfig:
    """Parse an image config blob into an ImageConfig."""
    try:
        doc = json.loads(data)
    except ValueError as err:
        raise UnsupportedMediaTypeError(f"{what}: image config is not JSON: {err}") from err
    if not isinstance(doc, dict):
        raise UnsupportedMediaTypeError(f"{what}: image config is not a JSON object")
    cfg = doc.get("config") or {}
    rootfs = doc.get("rootfs") or {}
    if not isinstance(cfg, dict) or not isinstance(rootfs, dict):
        raise UnsupportedMediaTypeError(f"{what}: malformed image config")
    if rootfs.get("type") != "layers":
        raise UnsupportedMediaTypeError(f"{what}: rootfs type {rootfs.get('type')!r} != 'layers'")
    diff_ids = tuple(parse_digest(str(d)) for d in rootfs.get("diff_ids") or [])
    return ImageConfig(
        architecture=str(doc.get("architecture", "")),
        os=str(doc.get("os", "")),
        variant=doc.get("variant"),
        diff_ids=diff_ids,
        entrypoint=_str_tuple(cfg.get("Entrypoint"), name="Entrypoint", what=what),
        cmd=_str_tuple(cfg.get("Cmd"), name="Cmd", what=what),
        env=_str_tuple(cfg.get("Env"), name="Env", what=what) or (),
        working_dir=str(cfg.get("WorkingDir") or ""),
        user=str(cfg.get("User") or ""),
        exposed_ports=frozenset((cfg.get("ExposedPorts") or {}).keys()),
        volumes=frozenset((cfg.get("Volumes") or {}).keys()),
        stop_signal=cfg.get("StopSignal") or None,
        labels={str(k): str(v) for k, v in (cfg.get("Labels") or {}).items()},
        created=doc.get("created"),
    )


def resolve_command(
    image: ImageConfig, *, command: Sequence[str] = (), args: Sequence[str] = ()
) -> tuple[str, ...]:
    """The argv a container runs, by Kubernetes' command/args rules over Docker's ENTRYPOINT/CMD."""
    if command:
        argv = (*command, *args)
    elif args:
        argv = (*(image.entrypoint or ()), *args)
    else:
        argv = (*(image.entrypoint or ()), *(image.cmd or ()))
    if not argv:
        raise NoCommandError(
            "no command specified: the image has no ENTRYPOINT or CMD and the container "
            "sets no command or args"
        )
    return argv

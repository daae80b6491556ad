"""Image config parsing, and Docker's ENTRYPOINT/CMD with Kubernetes' command/args rules."""

import json

import pytest

from cri.images import (
    NoCommandError,
    UnsupportedMediaTypeError,
    parse_image_config,
    resolve_command,
)
from cri.images.config import ImageConfig
from cri.images.digest import Digest, chain_ids, sha256_of

D1 = Digest("sha256:" + "1" * 64)
D2 = Digest("sha256:" + "2" * 64)


def _config(**cfg: object) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
        }
    ).encode()


def test_every_field_is_parsed() -> None:
    """Entrypoint, Cmd, Env, WorkingDir, User, ports, volumes, StopSignal, Labels are read."""
    cfg = parse_image_config(
        _config(
            Entrypoint=["/bin/sh", "-c"],
            Cmd=["id -u"],
            Env=["PATH=/bin", "A=b=c"],
            WorkingDir="/home/app",
            User="1000:1000",
            ExposedPorts={"8080/tcp": {}},
            Volumes={"/data": {}},
            StopSignal="SIGINT",
            Labels={"k": "v"},
        ),
        what="t",
    )
    assert cfg.entrypoint == ("/bin/sh", "-c") and cfg.cmd == ("id -u",)
    assert cfg.env_map() == {"PATH": "/bin", "A": "b=c"}
    assert (cfg.working_dir, cfg.user, cfg.stop_signal) == ("/home/app", "1000:1000", "SIGINT")
    assert cfg.exposed_ports == {"8080/tcp"} and cfg.volumes == {"/data"}
    assert cfg.labels == {"k": "v"} and cfg.diff_ids == (D1, D2)


def test_missing_config_section_is_empty_not_an_error() -> None:
    """An image without a config section has no entrypoint, cmd or env."""
    cfg = parse_image_config(
        json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}
        ).encode(),
        what="t",
    )
    assert cfg.entrypoint is None and cfg.cmd is None and cfg.env == ()


@pytest.mark.parametrize(
    "body", [b"not json", b"[]", json.dumps({"rootfs": {"type": "other"}}).encode()]
)
def test_malformed_configs_are_refused(body: bytes) -> None:
    """A config that is not an image config raises a typed error."""
    with pytest.raises(UnsupportedMediaTypeError):
        parse_image_config(body, what="t")


IMG = ImageConfig(architecture="amd64", os="linux", diff_ids=(), entrypoint=("ep",), cmd=("cmd",))
NO_EP = ImageConfig(architecture="amd64", os="linux", diff_ids=(), cmd=("cmd", "x"))
EMPTY = ImageConfig(architecture="amd64", os="linux", diff_ids=())


@pytest.mark.parametrize(
    ("image", "command", "args", "argv"),
    [
        (IMG, (), (), ("ep", "cmd")),  # Docker: ENTRYPOINT + CMD
        (IMG, ("x",), (), ("x",)),  # command replaces both
        (IMG, (), ("a",), ("ep", "a")),  # args replace CMD only
        (IMG, ("x",), ("a",), ("x", "a")),  # command + args
        (NO_EP, (), (), ("cmd", "x")),  # CMD alone
        (NO_EP, (), ("a", "b"), ("a", "b")),  # args alone with no ENTRYPOINT
        (EMPTY, ("x",), (), ("x",)),
    ],
)
def test_command_resolution(
    image: ImageConfig, command: tuple[str, ...], args: tuple[str, ...], argv: tuple[str, ...]
) -> None:
    """Each row of the ENTRYPOINT/CMD x command/args table gives the documented argv."""
    assert resolve_command(image, command=command, args=args) == argv


def test_nothing_to_run_is_a_clear_error() -> None:
    """No ENTRYPOINT, CMD, command or args: NoCommandError, not an empty argv."""
    with pytest.raises(NoCommandError, match="no command specified"):
        resolve_command(EMPTY)


def test_chain_ids_follow_the_oci_formula() -> None:
    """ChainID(L1) = sha256(ChainID(L0) + ' ' + DiffID(L1))."""
    assert chain_ids([D1, D2]) == [D1, sha256_of(f"{D1} {D2}".encode())]
    assert chain_ids([]) == []

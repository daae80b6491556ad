"""Conflist parsing and per-plugin request derivation follow SPEC.md Sections 1 and 3."""

import json
from pathlib import Path

import pytest

from cni import conflist
from cni.errors import Code, ConfigError

CHAIN = {
    "cniVersion": "1.1.0",
    "cniVersions": ["1.0.0", "1.1.0"],
    "name": "podnet",
    "plugins": [
        {
            "type": "bridge",
            "bridge": "cni0",
            "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"},
        },
        {"type": "portmap", "capabilities": {"portMappings": True, "bandwidth": False}, "x": 1},
    ],
}


def test_valid_list_parses_and_picks_highest_version() -> None:
    """A valid list keeps its plugins in order and uses the highest version we speak."""
    net = conflist.parse(CHAIN)
    assert [p.type for p in net.plugins] == ["bridge", "portmap"]
    assert net.version == "1.1.0"
    assert net.plugins[1].capabilities == frozenset({"portMappings"})


def test_single_plugin_conf_becomes_a_list() -> None:
    """A .conf with one plugin is treated as a list of one."""
    net = conflist.parse({"cniVersion": "1.0.0", "name": "n", "type": "loopback"})
    assert [p.type for p in net.plugins] == ["loopback"]
    assert "name" not in net.plugins[0].raw


@pytest.mark.parametrize(
    ("mutate", "code", "words"),
    [
        (lambda c: c.pop("name"), Code.INVALID_CONFIG, "network name"),
        (lambda c: c.update(name="bad name"), Code.INVALID_CONFIG, "network name"),
        (lambda c: c.pop("cniVersion"), Code.INVALID_CONFIG, "cniVersion"),
        (
            lambda c: c.update(cniVersion="0.2.0", cniVersions=[]),
            Code.INCOMPATIBLE_VERSION,
            "0.2.0",
        ),
        (lambda c: c.update(plugins=[]), Code.INVALID_CONFIG, "plugins"),
        (lambda c: c["plugins"].append({"bridge": "x"}), Code.INVALID_CONFIG, "plugins[2]"),
        (lambda c: c["plugins"].append({"type": "../evil"}), Code.INVALID_CONFIG, "invalid type"),
        (lambda c: c["plugins"][0].update(runtimeConfig={}), Code.UNSUPPORTED_FIELD, "reserved"),
        (lambda c: c.update(disableCheck="yes"), Code.INVALID_CONFIG, "disableCheck"),
    ],
)
def test_invalid_lists_say_what_is_wrong(mutate: object, code: int, words: str) -> None:
    """Each kind of bad list raises ConfigError with the right code, naming the problem."""
    raw = json.loads(json.dumps(CHAIN))
    mutate(raw)  # type: ignore[operator]
    with pytest.raises(ConfigError) as err:
        conflist.parse(raw, source="/etc/cni/net.d/10.conflist")
    assert err.value.code == code
    assert words in str(err.value)


def test_bad_json_is_a_decode_error() -> None:
    """Unparseable bytes are code 6 and name the file."""
    with pytest.raises(ConfigError) as err:
        conflist.parse_bytes(b"{nope", source="/x/10.conflist")
    assert err.value.code == Code.DECODE_FAILURE and "/x/10.conflist" in str(err.value)


def test_request_config_inserts_runtime_fields_and_keeps_the_rest() -> None:
    """cniVersion, name, runtimeConfig (declared caps only), prevResult; capabilities dropped."""
    net = conflist.parse(CHAIN)
    prev = {"cniVersion": "1.1.0", "ips": []}
    caps = {
        "portMappings": [{"hostPort": 1, "containerPort": 2, "protocol": "tcp"}],
        "bandwidth": {},
    }
    out = conflist.request_config(net, net.plugins[1], prev_result=prev, capability_args=caps)
    assert out["cniVersion"] == "1.1.0" and out["name"] == "podnet"
    assert out["runtimeConfig"] == {"portMappings": caps["portMappings"]}
    assert out["prevResult"] == prev and out["x"] == 1 and "capabilities" not in out
    first = conflist.request_config(net, net.plugins[0], prev_result=None, capability_args=caps)
    assert "prevResult" not in first and "runtimeConfig" not in first


def test_gc_config_lists_valid_attachments() -> None:
    """GC gets cni.dev/valid-attachments and no attachment fields."""
    net = conflist.parse(CHAIN)
    out = conflist.gc_config(net, net.plugins[0], [("b", "eth0"), ("a", "eth0"), ("a", "eth0")])
    assert out["cni.dev/valid-attachments"] == [
        {"containerID": "a", "ifname": "eth0"},
        {"containerID": "b", "ifname": "eth0"},
    ]


def test_load_dir_takes_the_first_valid_file_by_name(tmp_path: Path) -> None:
    """Files are considered in name order; broken ones are skipped; none at all is code 50."""
    with pytest.raises(ConfigError) as err:
        conflist.load_dir(tmp_path)
    assert err.value.code == Code.NOT_AVAILABLE
    (tmp_path / "05-broken.conflist").write_text("{")
    (tmp_path / "10-a.conflist").write_text(json.dumps(CHAIN))
    (tmp_path / "20-b.conflist").write_text(json.dumps({**CHAIN, "name": "other"}))
    assert conflist.load_dir(tmp_path).name == "podnet"
    assert conflist.load_dir(tmp_path, "other").name == "other"

"""CNI result types round-trip through JSON and reject malformed input."""

import pytest

from cni.errors import CNIError, Code
from cni.plugins import skel
from cni.types import PortMapping, Result, result_for_version

RESULT = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:00:00:00:01"},
        {"name": "veth1", "mac": "0a:58:00:00:00:02"},
        {"name": "eth0", "mac": "0a:58:00:00:00:03", "sandbox": "/run/netns/p", "mtu": 1450},
    ],
    "ips": [{"address": "10.0.0.2/24", "gateway": "10.0.0.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
}


def test_result_round_trip() -> None:
    """from_json(to_json(x)) keeps every field of a full result."""
    res = Result.from_json(RESULT)
    assert res.to_json() == RESULT
    assert [str(i) for i in res.sandbox_ips()] == ["10.0.0.2/24"]
    assert res.sandbox_ips("/run/netns/other") == ()


@pytest.mark.parametrize(
    "bad", [[], {"ips": [{"address": "nope"}]}, {"interfaces": [{"mac": "x"}]}, {"routes": [{}]}]
)
def test_malformed_results_are_decode_errors(bad: object) -> None:
    """Bad shapes raise code 6."""
    with pytest.raises(CNIError) as err:
        Result.from_json(bad)
    assert err.value.code == Code.DECODE_FAILURE


def test_port_mapping_validation() -> None:
    """Port mappings parse the convention's keys and reject bad protocols and ports."""
    pm = PortMapping.from_json({"hostPort": 8080, "containerPort": 80, "protocol": "UDP"})
    assert pm == PortMapping(8080, 80, "udp")
    for bad in (
        {"hostPort": 0, "containerPort": 80},
        {"hostPort": 1, "containerPort": 2, "protocol": "icmp"},
    ):
        with pytest.raises(CNIError):
            PortMapping.from_json(bad)


def _plugin() -> skel.Plugin:
    return skel.Plugin(name="t", add=lambda r: {}, delete=lambda r: None, check=lambda r: None)


def test_skel_requires_the_commands_variables() -> None:
    """ADD without CNI_NETNS is code 4 naming the variable; DEL does not need it."""
    conf = b'{"cniVersion": "1.1.0", "name": "n"}'
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0"}
    with pytest.raises(CNIError) as err:
        skel.parse_request(env, conf, _plugin())
    assert err.value.code == Code.INVALID_ENVIRONMENT and "CNI_NETNS" in str(err.value)
    req = skel.parse_request({**env, "CNI_COMMAND": "DEL", "CNI_ARGS": "A=1;B=2"}, conf, _plugin())
    assert req.args == {"A": "1", "B": "2"} and req.attachment_key() == "n/c1/eth0"


@pytest.mark.parametrize(
    ("env", "conf", "code"),
    [
        ({"CNI_COMMAND": "FROB"}, b"{}", Code.INVALID_ENVIRONMENT),
        ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "-x", "CNI_IFNAME": "eth0"}, b"{}", 4),
        ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "a/b"}, b"{}", 4),
        ({"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"}, b"{x", 6),
        (
            {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c", "CNI_IFNAME": "eth0"},
            b'{"cniVersion": "0.2.0", "name": "n"}',
            Code.INCOMPATIBLE_VERSION,
        ),
        ({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, b'{"cniVersion": "1.0.0", "name": "n"}', 1),
    ],
)
def test_skel_error_codes(env: dict[str, str], conf: bytes, code: int) -> None:
    """Bad command, container ID, ifname, JSON and versions map to the spec's codes."""
    with pytest.raises(CNIError) as err:
        skel.parse_request(env, conf, _plugin())
    assert err.value.code == code


def test_version_answer() -> None:
    """VERSION echoes the asked version and lists what the plugin supports."""
    req = skel.parse_request({"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "1.0.0"}', _plugin())
    assert skel.dispatch(_plugin(), req) == {
        "cniVersion": "1.0.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


def test_results_for_older_versions_name_the_ip_family() -> None:
    """0.3.x/0.4.0 results carry ips[].version; 1.x results are unchanged but for cniVersion."""
    old = result_for_version(RESULT, "0.4.0")
    assert old["cniVersion"] == "0.4.0" and old["ips"][0]["version"] == "4"
    v6 = result_for_version({"ips": [{"address": "fd00::2/64"}]}, "0.3.1")
    assert v6["ips"][0]["version"] == "6"
    assert result_for_version(RESULT, "1.0.0") == {**RESULT, "cniVersion": "1.0.0"}


def test_check_needs_0_4_0() -> None:
    """CHECK with a 0.3.1 configuration is code 1 (CHECK came with 0.4.0)."""
    env = {"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "e"}
    with pytest.raises(CNIError) as err:
        skel.parse_request(env, b'{"cniVersion": "0.3.1", "name": "n"}', _plugin())
    assert err.value.code == Code.INCOMPATIBLE_VERSION

"""Name and address rules of the lab network (no namespaces are made here)."""

import ipaddress

import pytest

from kubelet_py.devcluster.errors import NetLabError
from kubelet_py.devcluster.netlab import NetLab


@pytest.mark.parametrize("prefix", ["Bad", "-x", "a_b", "x" * 41, ""])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    """Prefixes become namespace and file names: only a safe alphabet is allowed."""
    with pytest.raises(NetLabError):
        NetLab(prefix)


def test_gateway_is_the_first_address_of_the_subnet() -> None:
    """The control plane listens on the underlay bridge's .1."""
    lab = NetLab("kpy-abc", subnet=ipaddress.IPv4Network("10.88.0.0/24"))
    assert lab.gateway == ipaddress.IPv4Address("10.88.0.1")
    assert lab.lab_netns == "kpy-abc-lab"
    assert lab.nsenter() == ["nsenter", "--net=/run/netns/kpy-abc-lab", "--"]

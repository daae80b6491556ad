"""The serving-CSR approver's checks: approve only claims the cluster already knows are true."""

import asyncio
import base64
from typing import Any

from kubelet_py.bootstrap.approver import approve_pending, serving_verdict
from kubelet_py.bootstrap.csr import CertKind, CertRequest, build_csr, serving_request
from kubelet_py.x509util import new_key

NODE = {
    "metadata": {"name": "n1"},
    "status": {"addresses": [{"type": "InternalIP", "address": "10.77.0.10"}]},
}


def _csr(
    request: CertRequest,
    *,
    user: str = "system:node:n1",
    groups: tuple[str, ...] = ("system:nodes", "system:authenticated"),
    usages: tuple[str, ...] = ("digital signature", "server auth"),
    name: str = "node-serving-csr-x",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "request": base64.b64encode(build_csr(request, new_key())).decode(),
            "signerName": request.kind.value,
            "usages": list(usages),
            "username": user,
            "groups": list(groups),
        },
    }


def test_matching_serving_csr_is_approved() -> None:
    """Node name + InternalIP as SANs, requested by that node: approve."""
    verdict = serving_verdict(_csr(serving_request("n1", ["10.77.0.10"])), NODE)
    assert verdict.approve, verdict.reason


def test_claims_the_cluster_does_not_know_stay_pending() -> None:
    """Another IP, another node's name, another requester, odd usages, no Node: never approved."""
    cases = [
        (_csr(serving_request("n1", ["10.77.0.99"])), NODE, "IP SAN 10.77.0.99"),
        (_csr(serving_request("n1", ["evil.example.com"])), NODE, "DNS SAN evil.example.com"),
        (
            _csr(serving_request("n1", ["10.77.0.10"]), user="system:node:n2"),
            NODE,
            "does not match",
        ),
        (_csr(serving_request("n1", ["10.77.0.10"]), user="alice"), NODE, "not a node"),
        (_csr(serving_request("n1", ["10.77.0.10"]), groups=()), NODE, "not in system:nodes"),
        (
            _csr(serving_request("n1", ["10.77.0.10"]), usages=("server auth", "client auth")),
            NODE,
            "usages",
        ),
        (_csr(serving_request("n1", ["10.77.0.10"])), None, "does not exist"),
    ]
    for csr, node, why in cases:
        verdict = serving_verdict(csr, node)
        assert not verdict.approve and why in verdict.reason, (why, verdict.reason)


class FakeApi:
    """Serves a CSR list and a Node; records approvals (pure logic only)."""

    def __init__(self, csrs: list[dict[str, Any]]) -> None:
        self.csrs = csrs
        self.approved: list[tuple[str, Any]] = []

    async def get(self, path: str, **params: str) -> Any:
        if path.endswith("/nodes/n1"):
            return NODE
        return {"items": self.csrs}

    async def put(self, path: str, body: Any) -> Any:
        self.approved.append((path, body))
        return body


def test_one_pass_approves_only_pending_serving_csrs() -> None:
    """Client CSRs and already-decided ones are skipped; the approval names its reason."""
    good = _csr(serving_request("n1", ["10.77.0.10"]), name="good")
    bad = _csr(serving_request("n1", ["10.9.9.9"]), name="bad")
    client_csr = _csr(CertRequest(CertKind.CLIENT, "n1"), name="client")
    done = _csr(serving_request("n1", ["10.77.0.10"]), name="done")
    done["status"] = {"conditions": [{"type": "Approved", "status": "True"}]}
    api = FakeApi([good, bad, client_csr, done])
    names = asyncio.run(approve_pending(api, said=set()))
    assert names == ["good"]
    path, body = api.approved[0]
    assert path.endswith("/certificatesigningrequests/good/approval")
    cond = body["status"]["conditions"][-1]
    assert cond["type"] == "Approved" and cond["reason"] == "KubeletPyServingApprover"

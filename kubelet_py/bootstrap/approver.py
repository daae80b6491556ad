"""An approver for `kubernetes.io/kubelet-serving` CSRs: the check an admin would make, automated.

Upstream approves no serving CSRs on its own: a serving certificate's SANs are claims a
node makes about itself. This approver accepts a claim only when the cluster already
knows it to be true (the checks of kubelet-csr-approver-like tools):

    requester   spec.username == system:node:<n>, in group system:nodes
    subject     CN system:node:<n>, O [system:nodes]
    usages      digital signature (+ key encipherment), server auth — nothing else
    SANs        DNS and IP only; every one is the Node <n>'s name or one of the
                addresses in its status (InternalIP, ExternalIP, Hostname, ...)
    Node        exists (a node registers before its addresses can match)

A CSR that fails a check is left pending (and logged), never denied: the node may just
not have registered yet, and an admin may still approve it by hand. `serving_verdict()`
is pure; `run()` polls pending CSRs (list every `interval_s`) and approves through the
/approval subresource. RBAC it needs: get/list/watch CSRs, update
certificatesigningrequests/approval, approve on signers/kubernetes.io/kubelet-serving,
get nodes (the Helm chart's `servingApprover` values render it).
"""

import asyncio
import base64
import datetime
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from cryptography import x509

from kubelet_py.agent.apiclient import ApiError
from kubelet_py.bootstrap.csr import CSR_PATH, NODES_GROUP, CertKind, csr_outcome

log = logging.getLogger("kubelet_py.bootstrap.approver")

_ALLOWED_USAGES = {"digital signature", "key encipherment", "server auth"}
REASON = "KubeletPyServingApprover"


@dataclass(frozen=True)
class Verdict:
    approve: bool
    reason: str


def serving_verdict(csr: dict[str, Any], node: dict[str, Any] | None) -> Verdict:
    """Whether a kubelet-serving CSR's claims match what the cluster knows of its node."""
    spec = csr.get("spec") or {}
    user = str(spec.get("username") or "")
    if not user.startswith("system:node:"):
        return Verdict(False, f"requested by {user!r}, not a node")
    if NODES_GROUP not in (spec.get("groups") or []):
        return Verdict(False, f"{user} is not in {NODES_GROUP}")
    usages = set(spec.get("usages") or [])
    if "server auth" not in usages or not usages <= _ALLOWED_USAGES:
        return Verdict(False, f"usages {sorted(usages)} are not a serving certificate's")
    try:
        req = x509.load_pem_x509_csr(base64.b64decode(spec.get("request") or ""))
    except ValueError as err:
        return Verdict(False, f"the request is not a PEM CSR: {err}")
    if not req.is_signature_valid:
        return Verdict(False, "the CSR's signature does not verify")
    cns = [a.value for a in req.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    orgs = [a.value for a in req.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)]
    if cns != [user] or orgs != [NODES_GROUP]:
        return Verdict(False, f"subject CN={cns} O={orgs} does not match {user}")
    node_name = user.removeprefix("system:node:")
    if node is None:
        return Verdict(False, f"Node {node_name} does not exist (yet)")
    try:
        sans = req.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Verdict(False, "the CSR has no SANs")
    other = [n for n in sans if not isinstance(n, x509.DNSName | x509.IPAddress)]
    if other:
        return Verdict(False, f"SANs of other kinds than DNS and IP: {other}")
    known = {node_name} | {
        str(a.get("address")) for a in (node.get("status") or {}).get("addresses") or []
    }
    known_ips = set()
    for k in known:
        try:
            known_ips.add(ipaddress.ip_address(k))
        except ValueError:
            pass
    for dns in sans.get_values_for_type(x509.DNSName):
        if dns not in known:
            return Verdict(False, f"DNS SAN {dns} is not an address of Node {node_name}")
    for ip in sans.get_values_for_type(x509.IPAddress):
        if ip not in known_ips:
            return Verdict(False, f"IP SAN {ip} is not an address of Node {node_name}")
    return Verdict(True, f"SANs match Node {node_name}'s name and addresses")


class ApproverApi(Protocol):
    async def get(self, path: str, **params: str) -> Any: ...

    async def put(self, path: str, body: Any) -> Any: ...


async def approve(api: ApproverApi, csr: dict[str, Any], message: str) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = dict(csr.get("status") or {})
    status["conditions"] = [
        *(status.get("conditions") or []),
        {
            "type": "Approved",
            "status": "True",
            "reason": REASON,
            "message": message,
            "lastUpdateTime": now,
        },
    ]
    name = csr["metadata"]["name"]
    await api.put(f"{CSR_PATH}/{name}/approval", {**csr, "status": status})


async def approve_pending(api: ApproverApi, *, said: set[str]) -> list[str]:
    """One pass: approve every pending serving CSR whose claims check out; return their names."""
    csrs = await api.get(CSR_PATH)
    approved = []
    for csr in csrs.get("items") or []:
        spec, name = csr.get("spec") or {}, csr["metadata"]["name"]
        if spec.get("signerName") != CertKind.SERVING.value:
            continue
        outcome = csr_outcome(csr)
        if outcome.approved or outcome.denied or outcome.certificate_pem:
            continue
        node_name = str(spec.get("username") or "").removeprefix("system:node:")
        node = None
        try:
            node = await api.get(f"/api/v1/nodes/{node_name}") if node_name else None
        except ApiError as err:
            if err.status != 404:
                raise
        verdict = serving_verdict(csr, node)
        if verdict.approve:
            await approve(api, csr, verdict.reason)
            log.info("approved %s: %s", name, verdict.reason)
            approved.append(name)
        elif name not in said:
            said.add(name)
            log.info("leaving %s pending: %s", name, verdict.reason)
    return approved


async def run(
    api: ApproverApi,
    *,
    interval_s: float = 2.0,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> None:
    """Approve matching serving CSRs until cancelled; API errors are logged and retried."""
    said: set[str] = set()
    while True:
        try:
            await approve_pending(api, said=said)
        except (ApiError, OSError, aiohttp.ClientError) as err:
            log.warning("listing or approving serving CSRs failed (retrying): %s", err)
        await sleep(interval_s)

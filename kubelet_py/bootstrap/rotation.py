"""Certificate rotation: renew a pair at 70-90 % of its lifetime, as client-go's manager does.

    deadline = notBefore + (0.7 + 0.2 * jitter) * (notAfter - notBefore)

(client-go util/certificate: `wait.Jitter(total, 0.2) - 0.3 * total`), so nodes that
joined together do not all renew at the same moment. A certificate missing, unreadable,
or not matching what we would ask for (a serving cert whose SANs lack the node's
address) is renewed at once. A failed renewal backs off 2, 4, 8, 16, 32 s and then
starts over from the deadline (already passed, so at once); the old pair stays in use
until a new one is on disk, so nothing that runs (pods, open streams, watches) notices.

Renewal asks with the node's own credentials (`selfnodeclient` approval for the client
cert). The new pair is written by `CertStore.update()`, then `on_rotated(path)` lets
the user swap it in: the API client loads it for new connections, the kubelet server
for new TLS handshakes; connections already open keep the certificate they began with.
"""

import asyncio
import datetime
import ipaddress
import logging
import random
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography import x509

from kubelet_py.bootstrap.csr import CertRequest, CSRApi, request_certificate
from kubelet_py.bootstrap.errors import BootstrapError, CredentialsError
from kubelet_py.bootstrap.store import CertStore
from kubelet_py.x509util import new_key

log = logging.getLogger("kubelet_py.bootstrap")

_BACKOFF_S = (2.0, 4.0, 8.0, 16.0, 32.0)


def rotation_deadline(
    not_before: datetime.datetime, not_after: datetime.datetime, jitter: float
) -> datetime.datetime:
    """When to renew: 70 % of the lifetime plus `jitter` (0..1) times another 20 %."""
    total = not_after - not_before
    return not_before + total * (0.7 + 0.2 * min(max(jitter, 0.0), 1.0))


def satisfies(cert: x509.Certificate, request: CertRequest) -> bool:
    """Does `cert` say what `request` asks for (subject, and every SAN asked for)?"""
    cns = [a.value for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if cns != [request.common_name]:
        return False
    if not request.dns_names and not request.ip_addresses:
        return True
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_dns = set(sans.get_values_for_type(x509.DNSName))
    have_ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    want_ips = {str(ipaddress.ip_address(a)) for a in request.ip_addresses}
    return set(request.dns_names) <= have_dns and want_ips <= have_ips


@dataclass(frozen=True)
class Clock:
    """Time and randomness, injectable so tests need no sleeping."""

    now: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)
    jitter: Callable[[], float] = random.random
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class CertificateRotator:
    """Keeps one pair (client or serving) fresh; `run()` until cancelled."""

    def __init__(
        self,
        *,
        api: CSRApi,
        store: CertStore,
        request: CertRequest,
        on_rotated: Callable[[str], None],
        csr_timeout_s: float = 900.0,
        clock: Clock | None = None,
    ) -> None:
        self.api = api
        self.store = store
        self.request = request
        self.on_rotated = on_rotated
        self.csr_timeout_s = csr_timeout_s
        self.clock = clock or Clock()
        self.rotations = 0

    def next_deadline(self) -> datetime.datetime:
        """Now if there is nothing usable, else the jittered 70-90 % point."""
        now = self.clock.now()
        current = self.store.current()
        if current is None:
            return now
        cert, _ = current
        if not satisfies(cert, self.request) or cert.not_valid_after_utc <= now:
            return now
        return rotation_deadline(
            cert.not_valid_before_utc, cert.not_valid_after_utc, self.clock.jitter()
        )

    async def rotate_once(self) -> str:
        """Ask for a new pair, wait for it, store it, announce it; return the new path."""
        key = new_key()
        name, cert_pem = await request_certificate(
            self.api,
            self.request,
            key,
            timeout_s=self.csr_timeout_s,
            progress=lambda m: log.info("%s certificate: %s", self.request.kind.label, m),
            progress_every_s=60.0,
        )
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            path = await asyncio.to_thread(self.store.update, cert_pem, key)
        except (OSError, ValueError) as err:
            raise CredentialsError(
                f"storing the new {self.request.kind.label} certificate from CSR {name}: {err}"
            ) from err
        self.rotations += 1
        log.info(
            "rotated the %s certificate (CSR %s): valid until %s",
            self.request.kind.label,
            name,
            cert.not_valid_after_utc.isoformat(),
        )
        try:
            self.on_rotated(str(self.store.current_path))
        except (OSError, ssl.SSLError) as err:
            raise CredentialsError(
                f"loading the new {self.request.kind.label} certificate {path}: {err}"
            ) from err
        return str(path)

    async def run(self) -> None:
        while True:
            deadline = self.next_deadline()
            wait_s = (deadline - self.clock.now()).total_seconds()
            if wait_s > 0:
                log.info(
                    "next %s certificate rotation at %s (in %.0f s)",
                    self.request.kind.label,
                    deadline.isoformat(),
                    wait_s,
                )
                await self.clock.sleep(wait_s)
            for delay in (*_BACKOFF_S, None):
                try:
                    await self.rotate_once()
                    break
                except BootstrapError as err:
                    if delay is None:
                        log.error(  # noqa: TRY400 - the error says it all; no traceback
                            "%s certificate rotation keeps failing: %s",
                            self.request.kind.label,
                            err,
                        )
                        await self.clock.sleep(_BACKOFF_S[-1])
                        break
                    log.warning(
                        "%s certificate rotation failed (retrying in %.0f s): %s",
                        self.request.kind.label,
                        delay,
                        err,
                    )
                    await self.clock.sleep(delay)

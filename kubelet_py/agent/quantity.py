"""Kubernetes resource quantities ("500m", "64Mi", "1G", "1e3") as numbers. Pure."""

import re
from decimal import Decimal, InvalidOperation

_SUFFIX = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "E": Decimal(10) ** 18,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
    "Ei": Decimal(2) ** 60,
}
_RE = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E)?$")


def parse_quantity(text: str | int | float) -> Decimal:
    if isinstance(text, int | float):
        return Decimal(str(text))
    m = _RE.match(text.strip())
    if not m:
        raise ValueError(f"invalid quantity {text!r}")
    try:
        return Decimal(m.group(1)) * _SUFFIX[m.group(2) or ""]
    except InvalidOperation as err:
        raise ValueError(f"invalid quantity {text!r}") from err


def milli_cpu(text: str) -> int:
    return int(parse_quantity(text) * 1000)


def bytes_of(text: str) -> int:
    return int(parse_quantity(text))


def cpu_shares(milli: int) -> int:
    """The kubelet's milliCPU -> cpu.shares (min 2)."""
    return max(2, milli * 1024 // 1000) if milli else 2


def cpu_quota(milli: int, period_us: int = 100000) -> int:
    """The kubelet's milliCPU limit -> CFS quota (min 1000us)."""
    return max(1000, milli * period_us // 1000)

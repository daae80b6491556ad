"""Atomic file writes for the dev cluster: the runtime's helper, shared rather than copied."""

from cri.fsutil import write_atomic

__all__ = ["write_atomic"]

"""The node monitor's CRI log records (cri.runtime.monitor), byte for byte as conmon writes them."""

import re

from cri.runtime.monitor import _exit_code, _timestamp, cri_log_records

TS = b"2026-01-02T03:04:05.000000001+00:00"


def test_full_lines_are_f_and_a_trailing_piece_is_p() -> None:
    """Each newline-terminated line is one F record; what follows the last newline is P."""
    out = cri_log_records(b"stdout", b"one\ntwo\npart", TS)
    assert out == (TS + b" stdout F one\n" + TS + b" stdout F two\n" + TS + b" stdout P part\n")


def test_empty_lines_and_stderr() -> None:
    """An empty line is an F record with no text; stderr is named as such."""
    assert cri_log_records(b"stderr", b"\n", TS) == TS + b" stderr F \n"
    assert cri_log_records(b"stderr", b"", TS) == b""


def test_timestamp_is_rfc3339_nano_with_a_colon_offset() -> None:
    """Nine fraction digits and a ±hh:mm offset, the layout conmon uses."""
    assert re.fullmatch(rb"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d", _timestamp())


def test_exit_codes_of_signals_are_128_plus() -> None:
    """A normal exit keeps its code; a signal death is 128 + the signal, as conmon reports."""
    assert _exit_code(3 << 8) == 3
    assert _exit_code(9) == 137

"""The block fast path of container-log rendering gives what the line-by-line path gives."""

import pytest

from kubelet_py.server.logs import STREAMS, LineAssembler, LogOptions

FULL = (
    b"2026-01-02T03:04:05.123456789Z stdout F hello world\n"
    b"2026-01-02T03:04:05.2+00:00 stderr F oops\n"
    b"2026-01-02T03:04:06Z stdout F:x  two  spaces \n"
)
PARTIAL = (
    b"2026-01-02T03:04:05Z stdout P hel\n"
    b"2026-01-02T03:04:05Z stderr F err\n"
    b"2026-01-02T03:04:06Z stdout F lo\n"
)
JUNK = b"not a record\n2026-01-02T03:04:05Z stdout F ok\n"


def _slow(opts: LogOptions, block: bytes) -> bytes:
    asm = LineAssembler(opts)
    return b"".join(asm.feed(line) for line in block[:-1].split(b"\n"))


@pytest.mark.parametrize("block", [FULL, PARTIAL, JUNK])
@pytest.mark.parametrize(
    "opts",
    [
        LogOptions(),
        LogOptions(timestamps=True),
        LogOptions(streams=frozenset({"stdout"})),
        LogOptions(since_ns=1_767_323_045_500_000_000),
    ],
)
def test_block_equals_lines(block: bytes, opts: LogOptions) -> None:
    """feed_block == feed per line, for full, partial and malformed records, every option."""
    assert LineAssembler(opts).feed_block(block) == _slow(opts, block)


def test_fast_path_output() -> None:
    """Full records in both streams: headers stripped, text and newlines kept as written."""
    out = LineAssembler(LogOptions(streams=STREAMS)).feed_block(FULL)
    assert out == b"hello world\noops\n two  spaces \n"

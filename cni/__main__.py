"""`python3 -m cni install --dir DIR`: write the plugin executables into DIR."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m cni", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    inst = commands.add_parser(
        "install", help="write bridge, host-local, loopback, portmap, kpy-isolation"
    )
    inst.add_argument("--dir", type=Path, required=True, help="plugin directory, e.g. /opt/cni/bin")
    args = parser.parse_args(argv)
    from cni.install import install

    for path in install(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A minimal conmon for tests: become a subreaper, run `create`, reap the container, report.

    python3 monitor.py CLI ROOT BUNDLE ID LOG [CREATE-FLAGS...]

Prints `created <pid>` (or `failed <rc> <stderr>`), then `exited <code>` once the
container's init is gone (128+N for a signal N). The container's stdout and stderr
go to LOG. It exits when the container does, so tests can wait on it.
"""

import ctypes
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main() -> int:
    cli, root, bundle, cid, log = sys.argv[1:6]
    flags = sys.argv[6:]
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid_file = f"{bundle}/pid"
    # The container keeps create's stdio: a file, never a pipe we would wait on for EOF.
    errors = f"{log}.create-stderr"
    with open(log, "ab") as out, open(errors, "wb") as err:
        proc = subprocess.run(
            [cli, f"--root={root}", "create", "--bundle", bundle, "--pid-file", pid_file,
             *flags, cid],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, check=False,
        )  # fmt: skip
    with open(errors) as f:
        message = f.read().strip()
    os.unlink(errors)
    if proc.returncode != 0:
        print(f"failed {proc.returncode} {message}", flush=True)
        return 1
    with open(pid_file) as f:
        pid = int(f.read())
    print(f"created {pid}", flush=True)
    code = -1
    while True:
        try:
            reaped, status = os.wait()
        except ChildProcessError:
            break
        if reaped == pid:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
    print(f"exited {code}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Suite-wide guards: integration tests need root, and a run leaves the machine as it found it.

At session start we snapshot the network namespaces, the mount table, this
process's children and the cgroups beneath this process's own cgroup (where the
runtime makes its cgroups, in every hierarchy); at the end anything new is
reported and fails the run, so a leak cannot hide behind green tests.
"""

import os
from pathlib import Path

import pytest

_BASELINE: dict[str, set[str]] = {}


def _netns() -> set[str]:
    run = Path("/run/netns")
    return {p.name for p in run.iterdir()} if run.is_dir() else set()


def _mounts() -> set[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    # mount point and source are fields 5 and 10 (after the " - " separator).
    out = set()
    for line in lines:
        left, _, right = line.partition(" - ")
        out.add(f"{left.split()[4]} {right.split()[1] if right else ''}")
    return out


def _children() -> set[str]:
    me = str(os.getpid())
    kids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:  # ppid
            kids.add(stat.parent.name)
    return kids


def _cgroups() -> set[str]:
    """Every cgroup directory beneath this process's own (non-root) cgroup paths."""
    own = set()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        path = line.split(":", 2)[2]
        if path not in ("", "/"):
            own.add(path.strip("/"))
    out = set()
    base = Path("/sys/fs/cgroup")
    for hierarchy in base.iterdir() if base.is_dir() else ():
        for path in own:
            top = hierarchy / path
            if top.is_dir() and not top.is_symlink():
                for d, subdirs, _ in os.walk(top):
                    out.update(str(Path(d, s)) for s in subdirs)
    return out


def pytest_sessionstart(session: pytest.Session) -> None:
    _BASELINE["netns"] = _netns()
    _BASELINE["mounts"] = _mounts()
    _BASELINE["children"] = _children()
    _BASELINE["cgroups"] = _cgroups()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _BASELINE or hasattr(session.config, "workerinput"):
        return
    leaks = {
        "network namespaces": _netns() - _BASELINE["netns"],
        "mounts": _mounts() - _BASELINE["mounts"],
        "child processes": _children() - _BASELINE["children"],
        "cgroups": _cgroups() - _BASELINE["cgroups"],
    }
    found = {k: v for k, v in leaks.items() if v}
    if found:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        text = "; ".join(f"{k}: {sorted(v)}" for k, v in found.items())
        if reporter is not None:
            reporter.write_line(f"LEAK: the test run left behind {text}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def require_root() -> None:
    """Integration tests use namespaces and real daemons: without root they fail, loudly."""
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, real control plane)")

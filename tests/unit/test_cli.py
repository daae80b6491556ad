"""The command line reads well and reports its version."""

import pytest

from kubelet_py import __version__
from kubelet_py.cli import main


def test_version_flag(capsys: pytest.CaptureFixture[str]) -> None:
    """`--version` prints the package version and exits 0."""
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"kubelet-py {__version__}"


def test_version_subcommand_names_the_pinned_kubernetes(capsys: pytest.CaptureFixture[str]) -> None:
    """`version` also says which Kubernetes release the control plane is pinned to."""
    assert main(["version"]) == 0
    assert "Kubernetes v1." in capsys.readouterr().out


def test_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` names every subcommand."""
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "cluster" in out and "version" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    """Running with no command shows help and exits 2, like other CLIs."""
    assert main([]) == 2
    assert "usage: kubelet-py" in capsys.readouterr().out


def test_cluster_requires_an_action() -> None:
    """`cluster` alone is a usage error."""
    with pytest.raises(SystemExit) as exc:
        main(["cluster"])
    assert exc.value.code == 2

"""The wrapper module that builds a pinned Kubernetes release: pure text generation."""

import pytest

from kubelet_py.devcluster.build import (
    ETCD_PACKAGE,
    K8S_COMMANDS,
    render_tools_go,
    render_wrapper_go_mod,
    staging_modules,
    staging_version,
    version_ldflags,
)
from kubelet_py.devcluster.errors import BuildError

KUBERNETES_GO_MOD = """\
module k8s.io/kubernetes

go 1.26.0

require (
	go.etcd.io/etcd/client/v3 v3.7.0
	go.etcd.io/etcd/server/v3 v3.7.0 // indirect
	k8s.io/api v0.0.0
)

replace (
	k8s.io/api => ./staging/src/k8s.io/api
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/client-go => ./staging/src/k8s.io/client-go
	k8s.io/streaming => ./staging/src/k8s.io/streaming
	example.com/other => ../other
)
"""


def test_staging_modules_are_read_from_the_release_go_mod() -> None:
    """Every ./staging replace is found once; other replaces are ignored."""
    assert staging_modules(KUBERNETES_GO_MOD) == [
        "k8s.io/api",
        "k8s.io/client-go",
        "k8s.io/streaming",
    ]


def test_staging_modules_refuses_a_go_mod_without_staging() -> None:
    """A go.mod with no staging replaces means the layout changed: say so instead of guessing."""
    with pytest.raises(BuildError, match="staging"):
        staging_modules("module x\n")


@pytest.mark.parametrize(("release", "staged"), [("v1.37.2", "v0.37.2"), ("v1.34.0", "v0.34.0")])
def test_staging_version_maps_v1_to_v0(release: str, staged: str) -> None:
    """Staging repos tag v0.Y.Z for Kubernetes v1.Y.Z."""
    assert staging_version(release) == staged


@pytest.mark.parametrize("bad", ["1.37.2", "v2.0.0", "v1.37", "v1.37.2-rc.1"])
def test_staging_version_rejects_non_releases(bad: str) -> None:
    """Only plain releases can be pinned."""
    with pytest.raises(BuildError, match="release"):
        staging_version(bad)


def test_wrapper_go_mod_requires_the_release_and_replaces_staging() -> None:
    """The wrapper pins kubernetes and etcd's server, and points staging at v0.Y.Z."""
    text = render_wrapper_go_mod(k8s_version="v1.37.2", kubernetes_go_mod=KUBERNETES_GO_MOD)
    assert "go 1.26.0" in text
    assert "\tk8s.io/kubernetes v1.37.2" in text
    assert "\tgo.etcd.io/etcd/server/v3 v3.7.0" in text
    assert "\tk8s.io/api => k8s.io/api v0.37.2" in text
    assert "\tk8s.io/streaming => k8s.io/streaming v0.37.2" in text
    assert "example.com/other" not in text


def test_tools_go_imports_every_command() -> None:
    """The tools file keeps each built command's module required."""
    text = render_tools_go()
    assert text.startswith("//go:build tools\n")
    for pkg in (ETCD_PACKAGE, *K8S_COMMANDS.values()):
        assert f'_ "{pkg}"' in text


def test_ldflags_stamp_the_release_version() -> None:
    """Binaries report the pinned release, not v0.0.0-master."""
    flags = version_ldflags("v1.37.2")
    assert "-X k8s.io/component-base/version.gitVersion=v1.37.2" in flags
    assert "-X k8s.io/component-base/version.gitMinor=37" in flags


def test_helm_is_stamped_with_the_pinned_kubernetes_release() -> None:
    """helm's offline lint/template assume the Kubernetes minor we pin, not helm's default."""
    from kubelet_py.devcluster.build import GO_TOOLS, HELM_VERSION, K8S_VERSION

    package, version, ldflags = GO_TOOLS["helm"]
    minor = K8S_VERSION.split(".")[1]
    assert package == "helm.sh/helm/v3/cmd/helm" and version == HELM_VERSION
    assert f"chartutil.k8sVersionMinor={minor}" in ldflags
    assert f"lint/rules.k8sVersionMinor={minor}" in ldflags

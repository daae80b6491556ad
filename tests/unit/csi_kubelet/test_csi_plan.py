"""Pure rules of the kubelet's CSI side: PV/inline specs, paths, access modes, contexts,
fsGroup policy, plugin validation, CSINode driver lists, backoff, and the on-disk records."""

import hashlib
import json
from pathlib import Path

import pytest

from csi_volumes.api.csi.v1 import csi_pb2
from csi_volumes.registration import PluginInfo
from kubelet_py.agent.csi import (
    CsiVolumeError,
    DriverInfo,
    PublishRecord,
    SecretRef,
    StageRecord,
    _write_json,
    access_mode,
    apply_fs_group,
    csinode_drivers,
    ephemeral_handle,
    next_backoff_s,
    pod_volume_dir,
    publish_context,
    publish_records,
    spec_from_inline,
    spec_from_pv,
    stage_records,
    staging_dir,
    validate_plugin,
)
from kubelet_py.agent.model import Container, Pod, Volume, pod_from_api

Mode = csi_pb2.VolumeCapability.AccessMode

POD = Pod(
    uid="u-1",
    name="web",
    namespace="ns1",
    node_name="n1",
    containers=(Container(name="c", image="i"),),
    service_account="sa",
)

PV = {
    "metadata": {"name": "pvc-123"},
    "spec": {
        "accessModes": ["ReadWriteMany"],
        "mountOptions": ["noatime"],
        "claimRef": {"namespace": "ns1", "name": "data"},
        "csi": {
            "driver": "s3.csi.kubelet-py.io",
            "volumeHandle": "bucket-1",
            "fsType": "",
            "volumeAttributes": {"mounter": "s3fs"},
            "nodeStageSecretRef": {"name": "creds", "namespace": "ns2"},
            "nodePublishSecretRef": {"name": "pub"},
        },
    },
}


def test_spec_from_pv_takes_every_field() -> None:
    """A CSI PV becomes a spec with handle, mode, flags, attributes and both secret refs."""
    spec = spec_from_pv(PV, claim_read_only=False)
    assert (spec.driver, spec.handle, spec.pv_name) == (
        "s3.csi.kubelet-py.io",
        "bucket-1",
        "pvc-123",
    )
    assert spec.access_mode == Mode.MULTI_NODE_MULTI_WRITER
    assert spec.mount_flags == ("noatime",)
    assert spec.attributes == {"mounter": "s3fs"}
    assert spec.stage_secret == SecretRef("ns2", "creds")
    assert spec.publish_secret == SecretRef("ns1", "pub")  # no namespace: the claim's
    assert not spec.read_only and not spec.ephemeral


def test_read_only_from_claim_or_pv() -> None:
    """readOnly on the pod's claim reference or on the PV's csi source makes the publish ro."""
    assert spec_from_pv(PV, claim_read_only=True).read_only
    pv = json.loads(json.dumps(PV))
    pv["spec"]["csi"]["readOnly"] = True
    assert spec_from_pv(pv, claim_read_only=False).read_only


def test_pv_without_csi_is_refused() -> None:
    """A PV of another kind is an error naming the PV."""
    with pytest.raises(CsiVolumeError, match="pv9 has no csi source"):
        spec_from_pv({"metadata": {"name": "pv9"}, "spec": {"hostPath": {}}}, claim_read_only=False)


@pytest.mark.parametrize(
    ("modes", "expected"),
    [
        (["ReadWriteOnce"], Mode.SINGLE_NODE_WRITER),
        (["ReadOnlyMany"], Mode.MULTI_NODE_READER_ONLY),
        (["ReadWriteOnce", "ReadWriteMany"], Mode.MULTI_NODE_MULTI_WRITER),
        (["ReadWriteOncePod"], Mode.SINGLE_NODE_SINGLE_WRITER),
        ([], Mode.SINGLE_NODE_WRITER),
    ],
)
def test_access_modes(modes: list[str], expected: int) -> None:
    """PV access modes map to the CSI access mode of the volume capability."""
    assert access_mode(modes) == expected


def test_inline_volume_spec() -> None:
    """An inline volume: the kubelet's generated handle, the ephemeral flag, pod-ns secrets."""
    vol = Volume(
        "scratch",
        "csi",
        {"driver": "d", "readOnly": True, "volumeAttributes": {"a": "b"},
         "nodePublishSecretRef": {"name": "s"}},
    )  # fmt: skip
    spec = spec_from_inline(POD, vol)
    digest = hashlib.sha256(b"u-1scratch").hexdigest()
    assert spec.handle == ephemeral_handle("u-1", "scratch") == f"csi-{digest}"
    assert spec.attributes == {"a": "b", "csi.storage.k8s.io/ephemeral": "true"}
    assert spec.publish_secret == SecretRef("ns1", "s")
    assert spec.ephemeral and spec.read_only


def test_model_keeps_pvc_and_csi_volumes() -> None:
    """pod_from_api types persistentVolumeClaim and csi volumes instead of 'unsupported'."""
    pod = pod_from_api(
        {
            "metadata": {"name": "p", "namespace": "n", "uid": "u"},
            "spec": {
                "containers": [{"name": "c", "image": "i"}],
                "volumes": [
                    {"name": "a", "persistentVolumeClaim": {"claimName": "data"}},
                    {"name": "b", "csi": {"driver": "d"}},
                ],
            },
        }
    )
    assert [(v.kind, dict(v.source)) for v in pod.volumes] == [
        ("persistentVolumeClaim", {"claimName": "data"}),
        ("csi", {"driver": "d"}),
    ]


def test_paths_follow_upstream_layout() -> None:
    """Staging under plugins/kubernetes.io/csi/<driver>/<sha256(handle)>, targets per pod."""
    root = Path("/r")
    digest = hashlib.sha256(b"h").hexdigest()
    assert staging_dir(root, "drv", "h") == Path(f"/r/plugins/kubernetes.io/csi/drv/{digest}")
    assert pod_volume_dir(root, "u", "v") == Path("/r/pods/u/volumes/kubernetes.io~csi/v")


def test_pod_info_on_mount() -> None:
    """The pod's identity goes into the publish context only when the CSIDriver asks."""
    spec = spec_from_pv(PV, claim_read_only=False)
    assert publish_context(spec, POD, pod_info_on_mount=False) == {"mounter": "s3fs"}
    ctx = publish_context(spec, POD, pod_info_on_mount=True)
    assert ctx["csi.storage.k8s.io/pod.name"] == "web"
    assert ctx["csi.storage.k8s.io/pod.namespace"] == "ns1"
    assert ctx["csi.storage.k8s.io/pod.uid"] == "u-1"
    assert ctx["csi.storage.k8s.io/serviceAccount.name"] == "sa"
    assert ctx["csi.storage.k8s.io/ephemeral"] == "false"


def test_fs_group_policy() -> None:
    """File always applies, None never, the default only to RWO volumes with an fsType."""
    rwx = spec_from_pv(PV, claim_read_only=False)
    pv = json.loads(json.dumps(PV))
    pv["spec"]["accessModes"] = ["ReadWriteOnce"]
    pv["spec"]["csi"]["fsType"] = "ext4"
    rwo = spec_from_pv(pv, claim_read_only=False)
    assert apply_fs_group("File", fs_group=2000, spec=rwx)
    assert not apply_fs_group("None", fs_group=2000, spec=rwo)
    assert not apply_fs_group("ReadWriteOnceWithFSType", fs_group=2000, spec=rwx)
    assert apply_fs_group("ReadWriteOnceWithFSType", fs_group=2000, spec=rwo)
    assert not apply_fs_group("File", fs_group=None, spec=rwx)
    assert not apply_fs_group("File", fs_group=2000, spec=spec_from_pv(PV, claim_read_only=True))


@pytest.mark.parametrize(
    ("info", "problem"),
    [
        (PluginInfo("CSIPlugin", "d", "/s.sock", ("1.0.0",)), ""),
        (PluginInfo("CSIPlugin", "d", "/s.sock", ("v1.2.0", "0.3.0")), ""),
        (PluginInfo("DevicePlugin", "d", "/s.sock", ("1.0.0",)), "is not CSIPlugin"),
        (PluginInfo("CSIPlugin", "", "/s.sock", ("1.0.0",)), "name is empty"),
        (PluginInfo("CSIPlugin", "d", "", ("1.0.0",)), "no endpoint"),
        (PluginInfo("CSIPlugin", "d", "/s.sock", ("0.3.0",)), "speaks 1.x"),
    ],
)
def test_validate_plugin(info: PluginInfo, problem: str) -> None:
    """Only CSI plugins with a name, an endpoint and a 1.x version are registered."""
    found = validate_plugin(info)
    assert (problem in found) if problem else found == ""


def test_csinode_drivers_add_replace_remove() -> None:
    """A driver is added with allocatable count, replaced in place by name, removed by name."""
    other = {"name": "a.example", "nodeID": "n1", "topologyKeys": None}
    info = DriverInfo("s3", "/x.sock", "n1", 5, ("zone",), True)
    out = csinode_drivers([other], add=info)
    assert out == [
        other,
        {"name": "s3", "nodeID": "n1", "topologyKeys": ["zone"], "allocatable": {"count": 5}},
    ]
    again = csinode_drivers(out, add=DriverInfo("s3", "/x.sock", "n2", 0, (), True))
    assert again == [other, {"name": "s3", "nodeID": "n2"}]
    assert csinode_drivers(again, remove="s3") == [other]


def test_backoff_doubles_to_the_cap() -> None:
    """0.5 s, doubling, capped at 122 s like the kubelet's volume operations."""
    seq = [next_backoff_s(0)]
    for _ in range(10):
        seq.append(next_backoff_s(seq[-1]))
    assert seq[:4] == [0.5, 1.0, 2.0, 4.0]
    assert seq[-1] == 122.0


def test_records_round_trip(tmp_path: Path) -> None:
    """Records written atomically are found again by a fresh scan (what a restart reads)."""
    st = StageRecord("drv", "h", str(staging_dir(tmp_path, "drv", "h") / "globalmount"))
    _write_json(Path(st.staging_path).parent / "vol_data.json", st.__dict__)
    for uid in ("u1", "u2"):
        vdir = pod_volume_dir(tmp_path, uid, "data")
        rec = PublishRecord("drv", "h", st.staging_path, str(vdir / "mount"), uid, "data")
        _write_json(vdir / "vol_data.json", rec.__dict__)
    (pod_volume_dir(tmp_path, "u3", "x") / "vol_data.json").parent.mkdir(parents=True)
    (pod_volume_dir(tmp_path, "u3", "x") / "vol_data.json").write_text("{not json")
    assert stage_records(tmp_path) == [st]
    assert [r.pod_uid for r in publish_records(tmp_path)] == ["u1", "u2"]
    assert [r.pod_uid for r in publish_records(tmp_path, "u2")] == ["u2"]
    assert not list(tmp_path.rglob("*.tmp"))

"""The static pod directory: changes are seen through inotify; unchanged files are not re-parsed."""

import asyncio
import json
from pathlib import Path

from kubelet_py.agent.model import Pod
from kubelet_py.agent.sources import StaticPodSource


def _manifest(name: str) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    })  # fmt: skip


def test_scan_reparses_only_changed_files(tmp_path: Path) -> None:
    """A second scan reuses the parsed pods of unchanged files; an edit is re-read."""
    (tmp_path / "a.yaml").write_text(_manifest("a"))
    (tmp_path / "b.yaml").write_text(_manifest("b"))
    errors: list[tuple[str, str]] = []
    source = StaticPodSource(
        tmp_path, node_name="n1", upsert=lambda _p: None, remove=lambda _u: None, api=None,
        report_error=lambda path, msg: errors.append((path, msg)),
    )  # fmt: skip
    parsed: list[str] = []
    original = source._parse

    def counting(path: Path) -> tuple[Pod, ...]:
        parsed.append(path.name)
        return original(path)

    source._parse = counting  # type: ignore[method-assign]
    first = source.scan()
    assert sorted(p.name for p in first.values()) == ["a-n1", "b-n1"]
    assert sorted(parsed) == ["a.yaml", "b.yaml"]
    parsed.clear()
    assert source.scan() == first and parsed == []
    (tmp_path / "b.yaml").write_text(_manifest("b2"))
    (tmp_path / "a.yaml").unlink()
    third = source.scan()
    assert parsed == ["b.yaml"] and [p.name for p in third.values()] == ["b2-n1"]
    (tmp_path / "bad.yaml").write_text("kind: Service\n")
    source.scan()
    assert errors == [(str(tmp_path / "bad.yaml"), "expected a Pod, found kind Service")]


def test_run_sees_a_new_manifest_without_waiting_for_the_rescan(tmp_path: Path) -> None:
    """With a 1-hour backstop, a manifest dropped in is still picked up at once (inotify)."""
    added: list[str] = []
    removed: list[str] = []

    async def scenario() -> None:
        source = StaticPodSource(
            tmp_path, node_name="n1", upsert=lambda p: added.append(p.name),
            remove=removed.append, api=None, report_error=lambda _p, _m: None,
            interval_s=3600,
        )  # fmt: skip
        task = asyncio.create_task(source.run())
        try:
            await asyncio.sleep(0.2)
            (tmp_path / "web.yaml").write_text(_manifest("web"))
            for _ in range(40):
                if added:
                    break
                await asyncio.sleep(0.05)
            assert added == ["web-n1"]
            (tmp_path / "web.yaml").unlink()
            for _ in range(40):
                if removed:
                    break
                await asyncio.sleep(0.05)
            assert len(removed) == 1
        finally:
            task.cancel()

    asyncio.run(scenario())

"""The inotify directory watch: a change calls back on the loop; silence does not."""

import asyncio
from pathlib import Path

import pytest

from cri.dirwatch import DirWatch, DirWatchError


def test_a_new_file_calls_back_and_quiet_does_not(tmp_path: Path) -> None:
    """Creating, renaming into and deleting in the directory each wake the watcher."""

    async def scenario() -> list[str]:
        seen: list[str] = []
        changed = asyncio.Event()
        watch = DirWatch(tmp_path, changed.set)
        try:
            for step, action in (
                ("create", lambda: (tmp_path / "a").write_text("1")),
                ("rename", lambda: (tmp_path / "a").rename(tmp_path / "b")),
                ("delete", lambda: (tmp_path / "b").unlink()),
            ):
                changed.clear()
                action()
                await asyncio.wait_for(changed.wait(), 2)
                seen.append(step)
            changed.clear()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(changed.wait(), 0.2)
        finally:
            watch.close()
        return seen

    assert asyncio.run(scenario()) == ["create", "rename", "delete"]


def test_watching_a_missing_directory_fails_with_its_name(tmp_path: Path) -> None:
    """A directory that does not exist is an error that names it."""

    async def scenario() -> None:
        DirWatch(tmp_path / "nope", lambda: None)

    with pytest.raises(DirWatchError, match="nope"):
        asyncio.run(scenario())

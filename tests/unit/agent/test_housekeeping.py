"""Image GC planning (thresholds, in-use, minimum age, LRU order) and which rotated logs go."""

from pathlib import Path

from kubelet_py.agent.housekeeping import ImageInfo, plan_image_gc, rotated_to_delete


def test_image_gc_frees_from_high_to_low_least_recently_used_first() -> None:
    """Above the high mark, unused images older than the minimum age go, LRU first, until
    the usage estimate is under the low mark; below the high mark nothing goes."""
    images = [
        ImageInfo("new", 30, last_used=995.0),  # too young
        ImageInfo("busy", 50, last_used=100.0),  # in use
        ImageInfo("old", 10, last_used=200.0),
        ImageInfo("older", 10, last_used=150.0),
        ImageInfo("mid", 10, last_used=300.0),
    ]
    kw = {"in_use": {"busy"}, "capacity_bytes": 100, "high_pct": 85, "low_pct": 70,
          "min_age_s": 60, "now": 1000.0}  # fmt: skip
    assert plan_image_gc(images, used_bytes=80, **kw) == []  # type: ignore[arg-type]
    assert plan_image_gc(images, used_bytes=90, **kw) == ["older", "old"]  # type: ignore[arg-type]
    assert plan_image_gc(images, used_bytes=100, **kw) == ["older", "old", "mid"]  # type: ignore[arg-type]


def test_rotated_logs_beyond_max_files_are_deleted_oldest_first(tmp_path: Path) -> None:
    """With MaxFiles 3, the current log and the two newest rotated ones stay."""
    current = tmp_path / "0.log"
    current.write_text("x")
    for stamp in ("20260101-000001", "20260101-000003", "20260101-000002", "20260101-000004"):
        (tmp_path / f"0.log.{stamp}").write_text("y")
    (tmp_path / "1.log.20250101-000000").write_text("other container attempt")
    gone = rotated_to_delete(current, 3)
    assert [p.name for p in gone] == ["0.log.20260101-000001", "0.log.20260101-000002"]

"""Line-scan assembly: line buffers in, frames of N lines out, neighbours sharing `overlap` lines."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from stream_app.feed.captures import Capture, Dropped, Notice
from stream_app.feed.linescan import LineScanAssembler, assemble

W = 32


def web(lines: int, seed: int = 0) -> np.ndarray:
    """A moving web as seen by a line sensor: [lines, W] of texture, each row a distinct signature in column 0."""
    rows = np.random.default_rng(seed).integers(40, 120, (lines, W), dtype=np.uint8)
    rows[:, 0] = np.arange(lines) % 251
    return rows


def strips(rows: np.ndarray, heights: list[int]):
    """Buffers of the given heights (cycled) with increasing frame ids and times, like a camera delivers them."""
    start, i = 0, 0
    while start < len(rows):
        h = heights[i % len(heights)]
        yield Capture(rows[start : start + h], ts=1000.0 + i * 0.01, frame_id=500 + i, headers={"camera-ts-ns": str(i)})
        start, i = start + h, i + 1


def run(rows: np.ndarray, n: int, k: int, heights: list[int]) -> list[Capture]:
    out = list(assemble(strips(rows, heights), LineScanAssembler(n, k)))
    assert all(isinstance(c, Capture) for c in out)
    return out


def test_frames_without_overlap_tile_the_web_in_order():
    rows = web(400)
    frames = run(rows, 64, 0, [1, 3, 7, 16])
    assert len(frames) == 400 // 64
    assert all(f.image.shape == (64, W) for f in frames)
    assert np.array_equal(np.concatenate([f.image for f in frames]), rows[: 64 * len(frames)])


def test_overlap_makes_neighbours_share_k_lines():
    rows = web(500)
    frames = run(rows, 64, 16, [5])
    assert [int(f.headers["first-line"]) for f in frames[:3]] == [0, 48, 96]
    for a, b in itertools.pairwise(frames):
        assert np.array_equal(a.image[-16:], b.image[:16])
    assert len(frames) == (500 - 16) // 48


def test_frame_time_id_and_headers_are_those_of_its_first_line():
    frames = run(web(200), 50, 10, [4])  # buffer i holds lines 4i..4i+3
    second = frames[1]  # starts at line 40: buffer 10
    assert second.frame_id == 510 and second.ts == pytest.approx(1000.1)
    assert second.headers["camera-ts-ns"] == "10" and second.headers["lines"] == "50"


def defect_web(lines: int, top: int, height: int) -> np.ndarray:
    rows = web(lines)
    rows[top : top + height, 10:20] = 255  # a scratch across the web, `height` lines long
    return rows


def frames_seeing_it_whole(frames: list[Capture], height: int) -> list[Capture]:
    return [f for f in frames if (f.image[:, 10:20] == 255).all(axis=1).sum() == height]


def test_a_defect_across_a_frame_boundary_is_cut_without_overlap():
    frames = run(defect_web(256, top=56, height=14), 64, 0, [8])  # lines 56..69 cross the boundary at 64
    assert frames_seeing_it_whole(frames, 14) == []
    assert [(f.image[:, 10:20] == 255).all(axis=1).sum() for f in frames[:2]] == [8, 6]


def test_with_overlap_the_defect_on_a_boundary_is_seen_whole_in_one_frame():
    frames = run(defect_web(256, top=56, height=14), 64, 16, [8])
    whole = frames_seeing_it_whole(frames, 14)
    assert len(whole) == 1 and whole[0].headers["first-line"] == "48"


def test_a_dropped_buffer_discards_the_partial_frame_and_restarts():
    rows = web(200)
    items = list(strips(rows, [10]))
    items[3] = Dropped("frame 503: buffer missing-packets", 503)
    out = list(assemble(items, LineScanAssembler(25, 0)))
    dropped = [i for i in out if isinstance(i, Dropped)]
    assert len(dropped) == 1 and "5 buffered lines discarded" in dropped[0].reason  # 30 lines in, 25 sent
    frames = [i for i in out if isinstance(i, Capture)]
    assert np.array_equal(frames[0].image, rows[:25])
    assert np.array_equal(frames[1].image, rows[40:65])  # starts again after the gap, never across it


def test_a_width_change_restarts_assembly_with_a_notice():
    a = LineScanAssembler(4)
    items = [Capture(np.zeros((3, 8), np.uint8), 1.0, 1), Capture(np.ones((4, 6), np.uint8), 2.0, 2)]
    out = list(assemble(items, a))
    assert isinstance(out[0], Notice) and "(8,) to (6,)" in out[0].message
    assert isinstance(out[1], Capture) and out[1].image.shape == (4, 6) and out[1].frame_id == 2


def test_colour_lines_and_single_lines_are_accepted():
    colour, grey = LineScanAssembler(3), LineScanAssembler(3)
    frames = [f for i in range(3) for f in colour.push(np.full((1, W, 3), i, np.uint8), float(i), i)]
    assert len(frames) == 1 and frames[0].image.shape == (3, W, 3)
    frames = [f for i in range(3) for f in grey.push(np.full(W, i, np.uint8), float(i), i)]  # 1-D: one line
    assert len(frames) == 1 and frames[0].image[:, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize(("n", "k"), [(1, 0), (8, 8), (8, -1)])
def test_bad_geometry_is_refused_with_the_rule(n, k):
    with pytest.raises(ValueError, match=r"lines_per_frame|overlap"):
        LineScanAssembler(n, k)


def test_buffers_the_camera_never_delivered_are_a_gap_not_stitched_over():
    """A buffer underrun leaves no Dropped, only skipped frame ids: lines on both sides of the lost web were
    stacked into one frame, which shows the web wrongly."""
    rows = web(200)
    items = [c for c in strips(rows, [10]) if c.frame_id not in (503, 504)]  # lines 30..49 never arrive
    out = list(assemble(items, LineScanAssembler(25, 0)))
    gaps = [i for i in out if isinstance(i, Dropped)]
    assert (
        len(gaps) == 1 and "503..504 never arrived" in gaps[0].reason and "5 buffered lines discarded" in gaps[0].reason
    )
    frames = [i for i in out if isinstance(i, Capture)]
    assert np.array_equal(frames[0].image, rows[:25]) and np.array_equal(frames[1].image, rows[50:75])


def test_a_reconnect_discards_the_lines_from_before_it():
    rows = web(100)
    before = list(strips(rows[:20], [10]))  # frame ids 500, 501
    after = [Capture(rows[50 + 10 * i : 60 + 10 * i], 2000.0 + i, 1 + i) for i in range(3)]  # ids restart at 1
    out = list(assemble([*before, Notice("camera lost: retrying", reconnect=True), *after], LineScanAssembler(25, 0)))
    frames = [i for i in out if isinstance(i, Capture)]
    assert len(frames) == 1 and np.array_equal(frames[0].image, rows[50:75])
    assert any(isinstance(i, Dropped) and "20 buffered lines discarded" in i.reason for i in out)


def test_frame_ids_wrapping_at_16_bits_are_not_a_gap():
    rows = web(60)
    items = [Capture(rows[10 * i : 10 * i + 10], 1.0 + i, fid) for i, fid in enumerate((65534, 65535, 1, 2, 3, 4))]
    out = list(assemble(items, LineScanAssembler(20, 0)))
    assert all(isinstance(i, Capture) for i in out) and len(out) == 3

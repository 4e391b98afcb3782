"""`linewatch feed camera` refuses contradictory options before connecting to anything."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stream_app.cli import app


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--url", "a.mp4", "--genicam", "Fake_1"], "exactly one of --dir DIR, --video FILE, --genicam"),
        ([], "exactly one of"),
        (["--genicam", "Fake_1", "--line-scan"], "--line-scan needs --lines-per-frame"),
        (
            ["--genicam", "Fake_1", "--line-scan", "--lines-per-frame", "64", "--overlap", "64"],
            "--overlap must be below",
        ),
        (["--genicam", "Fake_1", "--roi", "0,0,64"], "expected the region as x,y,width,height"),
        (["--genicam", "Fake_1", "--feature", "ExposureTime"], "expected a feature as Name=Value"),
        (["--url", "a.mp4", "--encoding", "webp"], "--encoding must be png or jpeg"),
    ],
)
def test_contradictory_or_malformed_options_exit_2_with_the_rule(args, says):
    result = CliRunner().invoke(app, ["feed", "camera", "--camera", "c", *args])
    assert result.exit_code == 2, result.output
    assert says in result.output.replace("\n", " ")

"""The hostile-input limits are ordinary settings: defaults sized above real inputs, environment overrides."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from stream_app.settings import LimitSettings, Settings


def test_defaults_admit_real_frames_and_a_full_batch_of_them():
    limits = LimitSettings()
    assert limits.max_image_pixels >= 4 * 384 * 384  # a few times the largest routed model input (ViT 384)
    assert limits.max_decoded_batch_bytes >= Settings().batching.max_image_batch * 1024 * 1024 * 3  # 256 x 1 Mpx RGB
    assert limits.max_image_pixels * 3 <= limits.max_decoded_batch_bytes  # one largest frame always fits


def test_limits_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LINEWATCH_LIMITS__MAX_IMAGE_PIXELS", "1000000")
    monkeypatch.setenv("LINEWATCH_LIMITS__MAX_SOURCES_PER_MODEL", "50")
    settings = Settings()
    assert settings.limits.max_image_pixels == 1_000_000 and settings.limits.max_sources_per_model == 50


def test_nonsense_limits_are_refused_at_start_up():
    with pytest.raises(ValidationError):
        LimitSettings(max_sources_per_model=0)
    with pytest.raises(ValidationError):
        LimitSettings(max_image_pixels=10)
    with pytest.raises(ValidationError, match="one RGB frame"):
        LimitSettings(max_image_pixels=4096 * 4096, max_decoded_batch_bytes=10 * 1024 * 1024)

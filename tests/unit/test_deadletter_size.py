"""Dead letters always fit the broker: an input near the message limit must not be retried forever."""

from __future__ import annotations

import hashlib

from stream_app.wire.outputs import deadletter_output, record_size
from stream_app.wire.records import Record

LIMIT = 10_000


def near_limit_record(value_bytes: int = LIMIT - 300, headers: dict[str, bytes] | None = None) -> Record:
    value = bytes(range(256)) * (value_bytes // 256) + b"x" * (value_bytes % 256)
    return Record("camera.frames", 2, 99, b"cam-1", value, headers or {"source": b"cam-1", "ts": b"1.0"})


def test_a_dead_letter_of_an_input_within_600_bytes_of_the_limit_fits_under_it():
    rec = near_limit_record()
    out = deadletter_output("dl", rec, "undecodable_image", "cannot decode image bytes: " + "x" * 400, max_bytes=LIMIT)
    assert record_size(out.key, out.value, out.headers) <= LIMIT
    headers = dict(out.headers)
    assert headers["truncated"] == b"true"
    assert headers["original-size"] == str(len(rec.value)).encode()
    assert headers["original-sha256"] == hashlib.sha256(rec.value).hexdigest().encode()
    assert rec.value.startswith(out.value) and headers["reason"] == b"undecodable_image"


def test_a_small_dead_letter_is_the_original_bytes_untouched():
    rec = near_limit_record(100)
    out = deadletter_output("dl", rec, "bad_schema", "nope", max_bytes=LIMIT)
    assert out.value == rec.value and "truncated" not in dict(out.headers)
    assert dict(out.headers)["source"] == b"cam-1"


def test_huge_input_headers_are_dropped_rather_than_overflowing_the_limit():
    rec = near_limit_record(100, headers={f"h{i}": b"v" * 500 for i in range(40)})
    out = deadletter_output("dl", rec, "bad_header", "too many headers", max_bytes=LIMIT)
    headers = dict(out.headers)
    assert record_size(out.key, out.value, out.headers) <= LIMIT
    assert headers["reason"] == b"bad_header" and headers["origin-offset"] == b"99"
    assert int(headers["headers-dropped"]) > 0


def test_a_huge_key_is_cut_too():
    rec = Record("t", 0, 1, b"k" * (2 * LIMIT), b"v", {})
    out = deadletter_output("dl", rec, "bad_schema", "x", max_bytes=LIMIT)
    assert record_size(out.key, out.value, out.headers) <= LIMIT and dict(out.headers)["key-truncated"] == b"true"


def test_verdicts_and_alerts_of_an_input_that_is_mostly_headers_stay_small() -> None:
    """An input just under the broker's limit in headers, with a valid value: its verdict and alert copied the
    headers and added a key and a body, the broker refused them and the batch was retried for ever."""
    from stream_app.judging.store import Judgement
    from stream_app.scoring.model_manager import LoadedModel
    from stream_app.wire.codecs import decode_vector, encode_vector
    from stream_app.wire.outputs import PASSTHROUGH_MAX_BYTES, alert_output, verdict_outputs

    value = encode_vector("line-1", [1.0, 2.0], ts=1.0)
    big = Record("sensor.vectors", 0, 7, b"line-1", value, {"trace": b"t-1", "blob": b"x" * (8 * 1024 * 1024)})
    small = Record("sensor.vectors", 0, 8, b"line-1", value, {"trace": b"t-2", "truth": b"normal"})
    event, model = decode_vector(value), LoadedModel("sensors", "0001", None)  # type: ignore[arg-type]
    judgement = Judgement("line-1", 9.0, 1.0, True, 9.0, None, None, False)
    verdicts = verdict_outputs("scores", [big, small], [event, event], model, [judgement, judgement])
    alert = alert_output("alerts", big, event, model, judgement, "sensor", {})
    for out in (verdicts[0], alert):
        assert record_size(out.key, out.value, out.headers) < PASSTHROUGH_MAX_BYTES
        assert out.headers == [("headers-dropped", b"2")]
    assert verdicts[1].headers == [("trace", b"t-2"), ("truth", b"normal")]  # small headers travel as before

"""Property: the control-plane parsers never raise anything but ControlRejected (with a known reason),
whatever JSON (or bytes) arrives on inspection.model-updates and inspection.control."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.registry.announcements import CONTROL_REJECT_REASONS, ControlRejected, parse_update
from stream_app.registry.versions import check_name
from stream_app.retraining.agent import parse_control

FUZZ = settings(max_examples=500, deadline=None)

names = st.one_of(st.text(max_size=12), st.sampled_from(["sensors", "..", "../camera/0001", "0002", ".x", "a/b"]))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False), names)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=8,
)
update_like = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "version": json_values,
        "sha256": st.one_of(json_values, st.just("ab" * 32)),
        "path": json_values,
        "promoted_at": json_values,
    },
)
control_like = st.fixed_dictionaries(
    {},
    optional={
        "action": st.one_of(json_values, st.just("retrain")),
        "model": json_values,
        "requested_at": st.one_of(json_values, st.floats(0, 2000)),
    },
)
messages = st.one_of(
    st.binary(max_size=100),
    st.builds(orjson.dumps, json_values),
    st.builds(orjson.dumps, update_like),
    st.builds(orjson.dumps, control_like),
)


@FUZZ
@given(messages)
def test_parse_update_only_rejects_with_a_reason(value):
    try:
        update = parse_update(value)
    except ControlRejected as exc:
        assert exc.reason in CONTROL_REJECT_REASONS
    else:  # what passes is safe to use as registry path components
        assert check_name("model", update["model"]) and check_name("version", update["version"])


@FUZZ
@given(messages, st.floats(0, 2e9))
def test_parse_control_only_rejects_with_a_reason(value, now):
    try:
        model = parse_control(value, now=now, max_age_s=300.0)
    except ControlRejected as exc:
        assert exc.reason in CONTROL_REJECT_REASONS
    else:
        assert check_name("model", model)

"""Topics the project creates: replicated for the cluster's size, and a refusal is an error, not silence."""

from __future__ import annotations

import pytest
from aiokafka.errors import InvalidReplicationFactorError, InvalidTopicError

from stream_app.ops.connections import ensure_topics
from tests.integration.shared import topic_replication

pytestmark = pytest.mark.integration


async def test_a_topic_the_cluster_refuses_is_an_error_with_its_reason(make_settings):
    settings = make_settings()

    with pytest.raises(InvalidTopicError, match="no spaces allowed"):
        await ensure_topics(settings, [settings.topics.alerts, "no spaces allowed"])


async def test_more_copies_than_brokers_is_refused_with_the_count(make_settings):
    settings = make_settings()
    settings.topics.replication_factor = 2  # the session's stack has one broker

    with pytest.raises(InvalidReplicationFactorError, match="replication factor of 2"):
        await ensure_topics(settings, [settings.topics.alerts])


async def test_on_one_broker_new_topics_keep_one_copy_and_need_one_in_sync(make_settings):
    settings = make_settings()
    await ensure_topics(settings, [settings.topics.alerts])

    assert await topic_replication(settings, settings.topics.alerts) == ({1}, 1)

"""Shared fixtures. Integration tests run against a real Kafka broker and Redis.

The session fixture uses KAFKA_BOOTSTRAP and REDIS_URL when both are set (a running stack, e.g.
`linewatch stack up`); otherwise it starts its own stack on free ports (or LINEWATCH_TEST_*_PORT) in a temporary directory and
stops it at the end. If a server cannot start, the run fails with the reason: never a silent skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy.localstack import free_port
from stream_app.settings import Settings, TopicSettings
from tests.servers import started

# Apps run as worker subprocesses by the tests; importing them needs their environment.
collect_ignore = ["apps"]


@dataclass(frozen=True)
class StackUrls:
    kafka_bootstrap: str
    redis_url: str
    stack: object | None  # deploy.localstack.LocalStack when the fixture started it


def _test_port(env: str) -> int:
    return int(os.environ.get(env) or free_port())


@pytest.fixture(scope="session")
def stack_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUrls]:
    bootstrap, redis_url = os.environ.get("KAFKA_BOOTSTRAP"), os.environ.get("REDIS_URL")
    if bootstrap and redis_url:
        yield StackUrls(bootstrap, redis_url, None)
        return
    from deploy.localstack import LocalStack

    stack = LocalStack(
        state_dir=tmp_path_factory.mktemp("stack"),
        cache_dir=Path(os.environ.get("LINEWATCH_STACK__CACHE_DIR", Path.home() / ".cache" / "linewatch")),
        kafka_port=_test_port("LINEWATCH_TEST_KAFKA_PORT"),
        controller_port=_test_port("LINEWATCH_TEST_CONTROLLER_PORT"),
        redis_port=_test_port("LINEWATCH_TEST_REDIS_PORT"),
    )
    with started(stack, "the real Kafka/Redis stack (integration tests cannot run without it)"):
        yield StackUrls(stack.bootstrap, stack.redis_url, stack)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tests train tiny nets: on a shared CPU a second intra-op thread mostly spins (measured 4x slower)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_settings(stack_urls: StackUrls, tmp_path: Path) -> Callable[..., Settings]:
    """Settings pointing at the real stack with topics, app id and Redis keys unique to this test."""

    def build(**overrides: object) -> Settings:
        tag = unique_name()
        topics = TopicSettings().prefixed(tag, partitions=2)
        base = Settings(
            app_id=f"lw-{tag}",
            topics=topics,
            registry_dir=tmp_path / "registry",
            state_dir=tmp_path / "state",
            web_port=0,
            metrics_port=0,
            worker_processes=1,  # tests that want more start more workers
        )
        base.kafka.bootstrap = stack_urls.kafka_bootstrap
        base.redis.url = stack_urls.redis_url
        base.redis.key_prefix = f"lw-{tag}"
        return base.model_copy(update=overrides)

    return build

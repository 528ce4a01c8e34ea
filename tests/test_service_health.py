"""A service whose scheduler dies says so: unready, failure recorded, its task group ends."""

from __future__ import annotations

import asyncio

import pytest

from stream.service import Service
from tests.support.service import http_get, service_config


async def test_scheduler_crash_makes_the_service_unready_and_stop() -> None:
    """A dead scheduler marks the service unready and ends it instead of serving on idle."""
    service = Service(service_config())

    async def broken_scheduler() -> None:
        # Fault injector: the real scheduler replaced by one that fails at once.
        await asyncio.sleep(0.05)
        raise RuntimeError("scheduler bug")

    service.pipeline.run = broken_scheduler  # type: ignore[method-assign]
    health: list[int] = []

    async def serve_until_closed() -> None:
        async with service:
            health.append((await http_get(service, "/healthz"))[0])
            async with asyncio.timeout(5):
                await service.wait_closed()  # the group cancels this task, or shutdown ends it

    with pytest.raises(ExceptionGroup) as info:
        await serve_until_closed()
    assert info.group_contains(RuntimeError, match="scheduler bug")
    assert health == [200]
    assert service.metrics.registry.get_sample_value("subtag_ready") == 0
    assert not service.ready
    assert isinstance(service.failure, RuntimeError)

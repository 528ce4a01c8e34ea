"""Fixtures that run the real service on a free port, and small client helpers for tests.

``start_service`` starts a :class:`stream.service.Service` (port 0, the rules backend unless a
tagger is given) and drains it at teardown; ``service_config`` builds a config with section
overrides; ``receive`` / ``receive_until`` read decoded messages from a WebSocket.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import pytest
from websockets.asyncio.client import ClientConnection

from engine.base import Tagger
from stream.config import ServiceConfig, load_config
from stream.schema import Done, OutboundMessage, decode_outbound
from stream.service import Service

__all__ = [
    "StartService",
    "count_done",
    "http_get",
    "receive",
    "receive_until",
    "service_config",
    "start_service",
    "ws_url",
]


def service_config(base: ServiceConfig | None = None, **sections: dict[str, Any]) -> ServiceConfig:
    """Defaults (or ``base``) on port 0, with ``section={key: value}`` overrides."""
    config = base or load_config(None, environ={})
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, port=0, shutdown_timeout_s=5.0)
    )
    for name, changes in sections.items():
        config = dataclasses.replace(
            config, **{name: dataclasses.replace(getattr(config, name), **changes)}
        )
    return config


class StartService(Protocol):
    """``await start_service(config=None, tagger=None, **sections)`` -> a running Service."""

    def __call__(
        self,
        config: ServiceConfig | None = None,
        *,
        tagger: Tagger | None = None,
        **sections: dict[str, Any],
    ) -> Awaitable[Service]: ...


@pytest.fixture
async def start_service() -> AsyncIterator[StartService]:
    """Start real services on free ports; each is drained and closed at teardown."""
    async with contextlib.AsyncExitStack() as stack:

        async def start(
            config: ServiceConfig | None = None,
            *,
            tagger: Tagger | None = None,
            **sections: dict[str, Any],
        ) -> Service:
            cfg = service_config(config, **sections)
            return await stack.enter_async_context(Service(cfg, tagger=tagger))

        yield start


def ws_url(service: Service, path: str) -> str:
    """``ws://127.0.0.1:PORT{path}`` of a running service."""
    return service.url.replace("http://", "ws://", 1) + path


async def receive(ws: ClientConnection, count: int, within: float = 10.0) -> list[OutboundMessage]:
    """The next ``count`` decoded messages from ``ws``."""
    out: list[OutboundMessage] = []
    async with asyncio.timeout(within):
        while len(out) < count:
            out.append(decode_outbound(await ws.recv()))
    return out


async def receive_until(
    ws: ClientConnection,
    done: Callable[[list[OutboundMessage]], bool],
    within: float = 20.0,
) -> list[OutboundMessage]:
    """Decoded messages from ``ws`` until ``done(messages)`` holds."""
    out: list[OutboundMessage] = []
    async with asyncio.timeout(within):
        while not done(out):
            out.append(decode_outbound(await ws.recv()))
    return out


def count_done(messages: list[OutboundMessage]) -> int:
    """How many ``done`` messages are in ``messages``."""
    return sum(isinstance(m, Done) for m in messages)


async def http_get(service: Service, path: str) -> tuple[int, str, bytes]:
    """``(status, content type, body)`` of a plain HTTP GET on the service's port."""

    def get() -> tuple[int, str, bytes]:
        try:
            with urllib.request.urlopen(service.url + path, timeout=5) as response:
                return response.status, response.headers["Content-Type"], response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read()

    return await asyncio.to_thread(get)

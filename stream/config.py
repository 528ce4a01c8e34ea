"""The service configuration: frozen dataclasses, loaded from TOML and the environment.

Every key has a default, so an empty file (or no file) is a working loopback service on the
rules backend. :func:`load_config` checks every key and type and raises
:class:`~stream.errors.ConfigError` naming the file, the section and the key. Secrets (tokens,
the broker password) may come from environment variables and never appear in ``repr``.

The dataclasses are ``dataclasses.replace``-friendly, so tests and the demo override what they
need::

    cfg = load_config(None)
    cfg = replace(cfg, server=replace(cfg.server, port=0))
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from stream.errors import ConfigError

__all__ = [
    "ENV_MQTT_PASSWORD",
    "ENV_TOKENS",
    "AuthConfig",
    "EngineConfig",
    "FanoutConfig",
    "LimitsConfig",
    "MetricsConfig",
    "MqttConfig",
    "SchedulerConfig",
    "ServerConfig",
    "ServiceConfig",
    "TokenConfig",
    "WindowConfig",
    "is_loopback",
    "load_config",
    "parse_tokens",
]

ENV_TOKENS: Final = "SUBTAG_TOKENS"
ENV_MQTT_PASSWORD: Final = "SUBTAG_MQTT_PASSWORD"

SCOPES: Final = ("ingest", "subscribe")


def _key(doc: str, *, minimum: float | None = None, secret: bool = False) -> dict[str, Any]:
    """Field metadata: the key's one-line doc, a lower bound, whether it is a secret."""
    return {"doc": doc, "min": minimum, "secret": secret}


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """``[server]``: the WebSocket/HTTP listener."""

    host: str = field(default="127.0.0.1", metadata=_key("address to listen on"))
    port: int = field(default=8765, metadata=_key("TCP port (0 = any free port)", minimum=0))
    shutdown_timeout_s: float = field(
        default=10.0,
        metadata=_key("how long a graceful shutdown waits for lines in flight", minimum=0),
    )
    ack_lines: bool = field(
        default=True,
        metadata=_key("send each line's done/error back on its /ingest connection"),
    )


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """``[engine]``: which tagger runs and how."""

    backend: Literal["auto", "rules", "seqgpt", "seqgpt-torch"] = field(
        default="auto",
        metadata=_key("auto = seqgpt when `model` is set, else rules"),
    )
    model: str | None = field(default=None, metadata=_key("SeqGPT export directory (or HF dir)"))
    providers: tuple[str, ...] = field(
        default=(),
        metadata=_key("ONNX Runtime providers in order, e.g. ['TensorrtExecutionProvider']"),
    )
    threads: int = field(
        default=0, metadata=_key("intra-op threads (0 = runtime default)", minimum=0)
    )
    line_timeout_ms: float = field(
        default=5000.0,
        metadata=_key("a model step silent this long fails with engine_timeout", minimum=1),
    )
    inline: Literal["auto", "always", "never"] = field(
        default="auto",
        metadata=_key("run the tagger on the event loop (auto = only the rules backend)"),
    )


@dataclass(frozen=True, slots=True)
class WindowConfig:
    """``[window]``: the rolling context kept per stream."""

    lines: int = field(default=4, metadata=_key("earlier lines given as context", minimum=0))
    tokens: int = field(default=256, metadata=_key("token budget of the context", minimum=0))
    idle_expiry_s: float = field(
        default=300.0, metadata=_key("forget a stream idle this long", minimum=0)
    )


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """``[scheduler]``: micro-batching lines from many streams."""

    max_batch: int = field(default=32, metadata=_key("lines per engine batch", minimum=1))
    max_wait_ms: float = field(
        default=1.0, metadata=_key("how long a line may wait for its batch to fill", minimum=0)
    )
    queue_per_stream: int = field(
        default=256, metadata=_key("lines queued per stream before `overloaded`", minimum=1)
    )
    max_queued: int = field(
        default=20000, metadata=_key("lines queued in all before `overloaded`", minimum=1)
    )


@dataclass(frozen=True, slots=True)
class FanoutConfig:
    """``[fanout]``: delivery to subscribers."""

    subscriber_queue: int = field(
        default=4096, metadata=_key("messages buffered per subscriber", minimum=1)
    )
    policy: Literal["drop_oldest", "disconnect"] = field(
        default="drop_oldest", metadata=_key("what a full subscriber queue does")
    )
    errors_to_subscribers: bool = field(
        default=True, metadata=_key("also send per-line engine errors to /events subscribers")
    )


@dataclass(frozen=True, slots=True)
class MqttConfig:
    """``[mqtt]``: the broker connection (off when ``url`` is unset)."""

    url: str | None = field(default=None, metadata=_key("mqtt://HOST:PORT or mqtts://HOST:PORT"))
    prefix: str = field(default="subtag", metadata=_key("topic prefix"))
    client_id: str = field(
        default="subtag-service", metadata=_key("fixed client id (persistent session)")
    )
    username: str | None = field(default=None, metadata=_key("broker user name"))
    password: str | None = field(
        default=None,
        repr=False,
        metadata=_key(f"broker password (or ${ENV_MQTT_PASSWORD})", secret=True),
    )
    tls: bool = field(default=False, metadata=_key("TLS to the broker (implied by mqtts://)"))
    ca_file: str | None = field(default=None, metadata=_key("CA bundle for the broker's cert"))
    cert_file: str | None = field(default=None, metadata=_key("client certificate (mutual TLS)"))
    key_file: str | None = field(default=None, metadata=_key("client key (mutual TLS)"))
    tls_insecure: bool = field(default=False, metadata=_key("skip hostname verification"))
    keepalive_s: int = field(default=30, metadata=_key("MQTT keepalive", minimum=1))
    reconnect_min_s: float = field(default=0.2, metadata=_key("first reconnect delay", minimum=0))
    reconnect_max_s: float = field(
        default=10.0, metadata=_key("longest reconnect delay", minimum=0)
    )
    dedupe: int = field(
        default=65536, metadata=_key("remembered (stream, seq) pairs for redelivery", minimum=0)
    )
    publish_queue: int = field(
        default=65536, metadata=_key("messages buffered for the broker", minimum=1)
    )


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """One access token: what it may do and on which streams."""

    token: str = field(repr=False, metadata=_key("the secret", secret=True))
    scopes: tuple[str, ...] = field(default=SCOPES, metadata=_key("any of 'ingest', 'subscribe'"))
    streams: tuple[str, ...] = field(
        default=("*",), metadata=_key("allowed stream patterns (fnmatch)")
    )
    name: str = field(default="", metadata=_key("label for logs and metrics (not secret)"))


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """``[auth]``: bearer tokens."""

    enabled: Literal["auto", "on", "off"] = field(
        default="auto", metadata=_key("auto = on whenever server.host is not loopback")
    )
    tokens: tuple[TokenConfig, ...] = field(
        default=(), repr=False, metadata=_key(f"[[auth.tokens]] tables (or ${ENV_TOKENS})")
    )

    def active(self, host: str) -> bool:
        """Whether tokens are required for a server listening on ``host``."""
        if self.enabled == "auto":
            return not is_loopback(host)
        return self.enabled == "on"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    """``[limits]``: what one client may do."""

    max_frame_bytes: int = field(
        default=65536, metadata=_key("largest ingest frame / MQTT payload", minimum=16)
    )
    max_line_chars: int = field(default=4096, metadata=_key("longest line", minimum=1))
    lines_per_second: float = field(
        default=1000.0, metadata=_key("sustained lines/s per connection (0 = no limit)", minimum=0)
    )
    burst: int = field(default=200, metadata=_key("lines a connection may send at once", minimum=1))
    max_streams: int = field(
        default=10000, metadata=_key("live streams (idle ones are evicted first)", minimum=1)
    )
    max_subscribers: int = field(
        default=1000, metadata=_key("/events subscribers per server", minimum=0)
    )


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint."""

    enabled: bool = field(default=True, metadata=_key("serve /metrics"))


@dataclass(frozen=True, slots=True)
class ServiceConfig:
    """The whole configuration of ``subtag serve``."""

    server: ServerConfig = field(default_factory=ServerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    window: WindowConfig = field(default_factory=WindowConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    fanout: FanoutConfig = field(default_factory=FanoutConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    source: str = field(default="<defaults>", metadata=_key("where the config came from"))


_SECTIONS: Final[dict[str, type[Any]]] = {
    name: hint for name, hint in typing.get_type_hints(ServiceConfig).items() if name != "source"
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _describe(hint: Any) -> str:
    """A human phrase for a type hint, for error messages."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (types.UnionType, typing.Union):
        parts = [_describe(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(parts)
    if origin is tuple:
        return "a list of strings"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        hint, str(hint)
    )


def _convert(where: str, hint: Any, value: Any, minimum: float | None) -> Any:
    """Check ``value`` against ``hint`` and return it in the dataclass's representation."""

    def bad(extra: str = "") -> ConfigError:
        bound = f" >= {minimum:g}" if minimum is not None else ""
        return ConfigError(f"{where} must be {_describe(hint)}{bound}{extra}, got {value!r}")

    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or value == "":
            return None
        return _convert(where, args[0], value, minimum)
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise bad()
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad()
        return tuple(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad()
        value = float(value)
    elif hint is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if minimum is not None and value < minimum:
        raise bad()
    return value


def _build(cls: type[Any], table: Mapping[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from a TOML table, checking every key."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        f = fields.get(key)
        if f is None:
            known = ", ".join(fields)
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
        if cls is AuthConfig and key == "tokens":
            values[key] = _build_tokens(value, f"{where} tokens")
            continue
        values[key] = _convert(f"{where} {key}", hints[key], value, f.metadata.get("min"))
    try:
        return cls(**values)
    except TypeError as exc:
        missing = [n for n, f in fields.items() if n not in values and _required(f)]
        raise ConfigError(f"{where}: missing key {', '.join(map(repr, missing))}") from exc


def _required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _build_tokens(value: Any, where: str) -> tuple[TokenConfig, ...]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where} must be an array of tables ([[auth.tokens]]), got {value!r}")
    tokens = tuple(_build(TokenConfig, v, f"{where}[{i}]") for i, v in enumerate(value))
    for i, token in enumerate(tokens):
        _check_token(token, f"{where}[{i}]")
    return tokens


def _check_token(token: TokenConfig, where: str) -> None:
    if not token.token:
        raise ConfigError(f"{where}: token must not be empty")
    for scope in token.scopes:
        if scope not in SCOPES:
            raise ConfigError(f"{where} scopes: unknown scope {scope!r}; use {', '.join(SCOPES)}")


def parse_tokens(spec: str, where: str = ENV_TOKENS) -> tuple[TokenConfig, ...]:
    """Parse the compact token list of ``$SUBTAG_TOKENS``.

    Entries are separated by whitespace or ``;``; each is ``TOKEN[:SCOPES[:STREAMS]]`` where
    SCOPES is ``ingest``, ``subscribe`` or both joined by ``,`` (default both) and STREAMS is a
    ``,``-joined list of fnmatch patterns (default ``*``). Example:
    ``"s3cret:ingest:news-*,sports  r3ader:subscribe"``.

    Raises:
        ConfigError: An entry is malformed (the message never repeats the secret).
    """
    tokens = []
    for i, entry in enumerate(spec.replace(";", " ").split()):
        parts = entry.split(":")
        if len(parts) > 3 or not parts[0]:
            raise ConfigError(f"{where}: entry {i + 1} must be TOKEN[:SCOPES[:STREAMS]]")
        scopes = tuple(s for s in parts[1].split(",") if s) if len(parts) > 1 else SCOPES
        streams = tuple(s for s in parts[2].split(",") if s) if len(parts) > 2 else ("*",)
        token = TokenConfig(
            token=parts[0], scopes=scopes or SCOPES, streams=streams or ("*",), name=f"env{i + 1}"
        )
        _check_token(token, f"{where}: entry {i + 1}")
        tokens.append(token)
    return tuple(tokens)


def _check_whole(cfg: ServiceConfig, where: str) -> None:
    """Cross-key checks a single key cannot make."""
    if cfg.auth.active(cfg.server.host) and not cfg.auth.tokens:
        raise ConfigError(
            f"{where}: [auth] is on (server.host {cfg.server.host!r} is not loopback, or "
            f"auth.enabled = 'on') but no tokens are configured; add [[auth.tokens]], set "
            f"${ENV_TOKENS}, or set auth.enabled = 'off' explicitly"
        )
    if cfg.mqtt.url is not None:
        scheme = cfg.mqtt.url.split("://", 1)[0]
        if "://" not in cfg.mqtt.url or scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ConfigError(
                f"{where}: [mqtt] url must look like mqtt://HOST:PORT, got {cfg.mqtt.url!r}"
            )
    if cfg.mqtt.reconnect_max_s < cfg.mqtt.reconnect_min_s:
        raise ConfigError(f"{where}: [mqtt] reconnect_max_s must be >= reconnect_min_s")
    if cfg.engine.backend in ("seqgpt", "seqgpt-torch") and not cfg.engine.model:
        raise ConfigError(f"{where}: [engine] backend {cfg.engine.backend!r} needs engine.model")


def load_config(
    path: str | Path | None, *, environ: Mapping[str, str] | None = None
) -> ServiceConfig:
    """Load and check the service configuration.

    Args:
        path: A TOML file, or ``None`` for the built-in defaults.
        environ: Where to read ``$SUBTAG_TOKENS`` and ``$SUBTAG_MQTT_PASSWORD`` (default
            ``os.environ``). Environment tokens are added to those of the file; the
            environment password replaces the file's.

    Returns:
        The configuration.

    Raises:
        ConfigError: The file is missing or unreadable, is not TOML, or a key is unknown,
            has the wrong type or is out of range (the message names file, section and key).
    """
    env = os.environ if environ is None else environ
    where = "<defaults>" if path is None else str(path)
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError as exc:
            raise ConfigError(f"{where}: config file not found") from exc
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read config file: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{where}: not valid TOML: {exc}") from exc
    sections: dict[str, Any] = {}
    for name, table in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(
                f"{where}: unknown section [{name}] (known sections: {', '.join(_SECTIONS)})"
            )
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: [{name}] must be a table, got {table!r}")
        sections[name] = _build(cls, table, f"{where}: [{name}]")
    cfg = ServiceConfig(**sections, source=where)
    if env.get(ENV_TOKENS):
        extra = parse_tokens(env[ENV_TOKENS])
        cfg = dataclasses.replace(
            cfg, auth=dataclasses.replace(cfg.auth, tokens=cfg.auth.tokens + extra)
        )
    if env.get(ENV_MQTT_PASSWORD):
        cfg = dataclasses.replace(
            cfg, mqtt=dataclasses.replace(cfg.mqtt, password=env[ENV_MQTT_PASSWORD])
        )
    _check_whole(cfg, where)
    return cfg

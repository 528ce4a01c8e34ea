"""Loading and checking the service configuration."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from stream.config import ServiceConfig, load_config, parse_tokens
from stream.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str, name: str = "x.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_default_file_equals_built_in_defaults() -> None:
    """configs/default.toml documents exactly the built-in defaults."""
    from_file = load_config(CONFIGS / "default.toml", environ={})
    assert dataclasses.replace(from_file, source="<defaults>") == load_config(None, environ={})


def test_default_file_lists_every_key() -> None:
    """Every key of every section appears in configs/default.toml (set or commented out)."""
    text = (CONFIGS / "default.toml").read_text(encoding="utf-8")
    config = ServiceConfig()
    for section in dataclasses.fields(config):
        if section.name == "source":
            continue
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(getattr(config, section.name)):
            assert re.search(rf"^#? ?{key.name} = ", text, re.M), f"{section.name}.{key.name}"


@pytest.mark.parametrize("name", ["websocket.toml", "mqtt.toml", "gpu-tensorrt.toml"])
def test_example_configs_load(name: str) -> None:
    """Each documented example is a valid configuration."""
    config = load_config(CONFIGS / name, environ={"SUBTAG_TOKENS": "t:ingest"})
    assert config.source.endswith(name)


def test_bad_type_names_file_section_and_key(tmp_path: Path) -> None:
    """A value of the wrong type is an error naming the file, section and key."""
    path = write(tmp_path, "[scheduler]\nmax_batch = 'a'\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path, environ={})
    assert str(exc.value) == f"{path}: [scheduler] max_batch must be an integer >= 1, got 'a'"


def test_out_of_range_value_is_refused(tmp_path: Path) -> None:
    """A number below its minimum is refused."""
    with pytest.raises(ConfigError, match=r"\[window\] lines must be an integer >= 0, got -1"):
        load_config(write(tmp_path, "[window]\nlines = -1\n"), environ={})


def test_unknown_key_and_section_are_refused(tmp_path: Path) -> None:
    """Typos are errors that list the known names."""
    with pytest.raises(ConfigError, match=r"\[server\]: unknown key 'prot'.*port"):
        load_config(write(tmp_path, "[server]\nprot = 1\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown section \[sever\]"):
        load_config(write(tmp_path, "[sever]\nport = 1\n"), environ={})


def test_bad_choice_lists_the_choices(tmp_path: Path) -> None:
    """A value outside a fixed set names the allowed values."""
    with pytest.raises(ConfigError, match="policy must be one of 'drop_oldest', 'disconnect'"):
        load_config(write(tmp_path, "[fanout]\npolicy = 'block'\n"), environ={})


def test_missing_file_and_bad_toml_are_clear(tmp_path: Path) -> None:
    """A missing file and invalid TOML are named as such."""
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[server\n"), environ={})


def test_auth_on_without_tokens_is_an_error(tmp_path: Path) -> None:
    """Listening beyond loopback without tokens is refused unless auth is explicitly off."""
    path = write(tmp_path, "[server]\nhost = '0.0.0.0'\n")
    with pytest.raises(ConfigError, match="no tokens are configured"):
        load_config(path, environ={})
    off = write(tmp_path, "[server]\nhost = '0.0.0.0'\n[auth]\nenabled = 'off'\n", "off.toml")
    assert not load_config(off, environ={}).auth.active("0.0.0.0")
    env = load_config(path, environ={"SUBTAG_TOKENS": "abc:subscribe:news-*"})
    assert env.auth.active("0.0.0.0")
    (token,) = env.auth.tokens
    assert token.scopes == ("subscribe",)
    assert token.streams == ("news-*",)


def test_tokens_tables_and_secret_repr(tmp_path: Path) -> None:
    """Tokens come from [[auth.tokens]]; neither tokens nor passwords appear in repr."""
    path = write(
        tmp_path,
        "[[auth.tokens]]\ntoken = 'tok-SECRET'\nscopes = ['ingest']\nname = 'a'\n"
        "[mqtt]\nurl = 'mqtt://127.0.0.1:1'\n",
    )
    config = load_config(path, environ={"SUBTAG_MQTT_PASSWORD": "pw-SECRET"})
    assert config.auth.tokens[0].token == "tok-SECRET"
    assert config.mqtt.password == "pw-SECRET"
    assert "SECRET" not in repr(config)


def test_bad_scope_is_refused(tmp_path: Path) -> None:
    """An unknown scope is named."""
    with pytest.raises(ConfigError, match="unknown scope 'admin'"):
        parse_tokens("abc:admin")
    path = write(tmp_path, "[[auth.tokens]]\ntoken = 'x'\nscopes = ['write']\n")
    with pytest.raises(ConfigError, match=r"tokens\[0\] scopes: unknown scope 'write'"):
        load_config(path, environ={})


def test_bad_mqtt_url_is_refused(tmp_path: Path) -> None:
    """The broker URL must be mqtt:// or mqtts://."""
    with pytest.raises(ConfigError, match="url must look like mqtt://HOST:PORT"):
        load_config(write(tmp_path, "[mqtt]\nurl = 'http://x'\n"), environ={})


def test_replace_friendly() -> None:
    """Tests and the demo override one key with dataclasses.replace."""
    config = load_config(None, environ={})
    changed = dataclasses.replace(config, server=dataclasses.replace(config.server, port=0))
    assert changed.server.port == 0
    assert config.server.port == 8765


def test_engine_choice_and_reason() -> None:
    """auto picks seqgpt when a model is configured, else rules, and says why."""
    from stream.service import choose_backend

    config = load_config(None, environ={})
    assert choose_backend(config) == ("rules", "no engine.model is configured")
    with_model = dataclasses.replace(
        config, engine=dataclasses.replace(config.engine, model="models/x")
    )
    assert choose_backend(with_model) == ("seqgpt", "engine.model is set (models/x)")
    named = dataclasses.replace(config, engine=dataclasses.replace(config.engine, backend="rules"))
    assert choose_backend(named) == ("rules", "engine.backend = 'rules'")

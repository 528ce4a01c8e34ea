"""A real mosquitto broker on a free loopback port, for integration and fault tests.

``broker`` yields a running :class:`Broker` (anonymous access, persistence in a temporary
directory so that persistent sessions and queued QoS 1 messages survive :meth:`Broker.stop` /
:meth:`Broker.start`). ``make_broker`` builds more of them, optionally with a password file.
Tests skip, with the reason, only when no mosquitto binary exists on this machine.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Final, Protocol

import pytest

__all__ = ["Broker", "MakeBroker", "broker", "find_mosquitto", "make_broker"]

_CANDIDATES: Final = ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
_READY_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 5.0


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary, or ``None`` when this machine has none."""
    for candidate in _CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("mosquitto")


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Broker:
    """One mosquitto process with its own config, log and persistence directory.

    Attributes:
        host: Always ``127.0.0.1``.
        port: The listener's port; it stays the same across :meth:`stop` / :meth:`start`.
        url: ``mqtt://127.0.0.1:PORT``.
        directory: Holds ``mosquitto.conf``, ``mosquitto.log`` and the persistence database.
        username: The user of the password file, when the broker requires one.
        password: That user's password.
        autosave: Whether the persistence database is written after every change (so a
            SIGKILL loses nothing acknowledged), not only at shutdown.
    """

    def __init__(
        self,
        binary: str,
        directory: Path,
        *,
        username: str | None = None,
        password: str | None = None,
        autosave: bool = False,
    ) -> None:
        self.binary = binary
        self.directory = directory
        self.host = "127.0.0.1"
        self.port = _free_port()
        self.url = f"mqtt://{self.host}:{self.port}"
        self.username = username
        self.password = password
        self.autosave = autosave
        self.config_path = directory / "mosquitto.conf"
        self.log_path = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        persistence = self.directory / "persistence"
        persistence.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            # mosquitto needs the trailing slash: the location is a directory prefix.
            f"persistence_location {persistence}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            # Enough in flight and queued that a load or fault test is never throttled by the
            # broker's defaults (20 in flight, 1000 queued per client).
            "max_inflight_messages 0",
            "max_queued_messages 100000",
            # Without it mosquitto's small writes wait for delayed ACKs (~40 ms per message).
            "set_tcp_nodelay true",
        ]
        if self.autosave:
            # Write the persistence database after every change, so that even a SIGKILL
            # loses nothing the broker acknowledged (at a cost per message: tests only).
            lines += ["autosave_on_changes true", "autosave_interval 1"]
        if os.geteuid() == 0:
            # As root, mosquitto 2 drops to the 'mosquitto' user, which cannot write our
            # temporary persistence directory; stay the current user instead.
            lines.append(f"user {getpass.getuser()}")
        if self.username is not None and self.password is not None:
            password_file = self.directory / "passwords"
            self._write_password_file(password_file, self.username, self.password)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _write_password_file(self, path: Path, username: str, password: str) -> None:
        tool = shutil.which("mosquitto_passwd")
        if tool is None:
            pytest.skip("mosquitto_passwd is not installed: cannot build a password-file broker")
        subprocess.run(
            [tool, "-b", "-c", str(path), username, password],
            check=True,
            capture_output=True,
        )
        path.chmod(0o600)

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start (or restart) the broker on the same port and persistence; wait until ready.

        Raises:
            RuntimeError: The broker exited or did not accept connections in time; the message
                carries the end of its log.
        """
        if self.running:
            return
        self._process = subprocess.Popen(
            [self.binary, "-c", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start-up:\n{self._diagnostics()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.5),
            ):
                return
            time.sleep(0.02)
        self._process.kill()
        self._process.wait(timeout=_STOP_TIMEOUT_S)
        raise RuntimeError(
            f"mosquitto did not listen within {_READY_TIMEOUT_S}s:\n{self._diagnostics()}"
        )

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker: SIGTERM (persistence is written on shutdown) or SIGKILL."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_STOP_TIMEOUT_S)
        if process.stderr is not None:
            process.stderr.close()

    def close(self) -> None:
        """Stop the broker for good (used at fixture teardown)."""
        self.stop()
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()

    def log(self) -> str:
        """The broker's log so far (for assertion messages)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self) -> str:
        stderr = b""
        if self._process is not None and self._process.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                stderr = self._process.stderr.read()
        return (stderr.decode("utf-8", "replace") + self.log())[-4000:]

    def __repr__(self) -> str:
        return f"Broker(url={self.url!r}, running={self.running})"


class MakeBroker(Protocol):
    """``make_broker(username=None, password=None, autosave=False)`` -> a started Broker."""

    def __call__(
        self, *, username: str | None = None, password: str | None = None, autosave: bool = False
    ) -> Broker: ...


@pytest.fixture
def make_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeBroker]:
    """Start real mosquitto brokers on free ports; each is stopped at teardown."""
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("mosquitto is not installed (looked in /usr/sbin and on PATH)")
    started: list[Broker] = []

    def make(
        *, username: str | None = None, password: str | None = None, autosave: bool = False
    ) -> Broker:
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        directory = tmp_path_factory.mktemp("mosquitto")
        instance = Broker(
            binary, directory, username=username, password=password, autosave=autosave
        )
        started.append(instance)
        instance.start()
        return instance

    try:
        yield make
    finally:
        for instance in started:
            instance.close()


@pytest.fixture
def broker(make_broker: MakeBroker) -> Broker:
    """A running anonymous mosquitto with persistence, on a free 127.0.0.1 port."""
    return make_broker()

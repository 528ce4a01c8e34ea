"""Shared pytest configuration; fixtures live in tests/support/ modules listed here."""

pytest_plugins: list[str] = ["tests.support.broker", "tests.support.service", "tests.support.model"]

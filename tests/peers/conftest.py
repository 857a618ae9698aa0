"""The peer-parity tests' report: one line per (method, ratio, prompt), printed after the run.

``make test-peers`` shows it in the terminal summary, passed tests included, so the outcome of each
comparison (identical, or how many entries differ and whether each difference is a tie) is read
without ``-s``.
"""

from __future__ import annotations

import pytest

PARITY_LINES: list[str] = []


@pytest.fixture(scope="session")
def parity_report() -> list[str]:
    """The list each parity test appends its summary line to."""
    return PARITY_LINES


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if not PARITY_LINES:
        return
    terminalreporter.section("kvpress parity")
    for line in PARITY_LINES:
        terminalreporter.write_line(line)

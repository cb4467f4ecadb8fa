"""The HTTP server's bounds piece by piece (the protocol: tests/e2e/test_http_hostile.py)."""

from __future__ import annotations

import errno
import json
import logging
import resource
from collections.abc import Iterator

import pytest

from dormant.serving import (
    ACCEPT_ERROR,
    AcceptErrorFilter,
    GuardedH11Protocol,
    HttpLimits,
    connection_cap,
    error_bytes,
    install_accept_error_filter,
    protocol_for,
    raise_open_files,
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def accept_record(message: str = ACCEPT_ERROR) -> logging.LogRecord:
    """What asyncio's default exception handler logs when accept() fails with EMFILE."""
    exc = OSError(errno.EMFILE, "Too many open files")
    return logging.LogRecord(
        "asyncio",
        logging.ERROR,
        __file__,
        1,
        f"{message}\nsocket: <asyncio.TransportSocket fd=6>",
        (),
        (OSError, exc, None),
    )


def test_accept_errors_pass_at_most_once_a_second() -> None:
    clock = Clock()
    accept_filter = AcceptErrorFilter(interval=1.0, clock=clock)
    passed = []
    for _ in range(32):  # 4 s of 10 errors every 125 ms (asyncio logs thousands a second)
        for _ in range(10):
            record = accept_record()
            if accept_filter.filter(record):
                passed.append(record)
        clock.now += 0.125
    assert len(passed) == 4
    assert [getattr(r, "suppressed", None) for r in passed] == [0, 79, 79, 79]
    first = passed[0]
    assert first.getMessage() == f"{ACCEPT_ERROR}: [Errno 24] Too many open files"
    assert first.exc_info is None  # no traceback repeated in the log


def test_other_asyncio_errors_pass() -> None:
    accept_filter = AcceptErrorFilter(clock=Clock())
    assert accept_filter.filter(accept_record())
    other = accept_record("Task exception was never retrieved")
    assert accept_filter.filter(other)
    assert accept_filter.filter(accept_record("Task exception was never retrieved"))
    assert other.exc_info is not None


@pytest.fixture
def asyncio_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("asyncio")
    before = list(logger.filters)
    try:
        yield logger
    finally:
        logger.filters[:] = before


def test_the_filter_is_installed_once(asyncio_logger: logging.Logger) -> None:
    first = install_accept_error_filter()
    assert install_accept_error_filter() is first
    assert [f for f in asyncio_logger.filters if isinstance(f, AcceptErrorFilter)] == [first]


def test_the_filter_works_on_the_logger(
    asyncio_logger: logging.Logger, caplog: pytest.LogCaptureFixture
) -> None:
    install_accept_error_filter(interval=3600)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(1000):
            asyncio_logger.handle(accept_record())
    assert [r.getMessage() for r in caplog.records] == [
        f"{ACCEPT_ERROR}: [Errno 24] Too many open files"
    ]


@pytest.mark.parametrize(
    ("wanted", "open_files", "cap"),
    [
        (2000, 1_048_576, 2000),
        (2000, 20000, 2000),
        (2000, 4096, 2000),
        (2000, 2048, 1536),
        (2000, 256, 192),
        (2000, 100, 36),
        (2000, 64, 16),
        (10, 256, 10),
    ],
)
def test_connection_cap_leaves_descriptors_for_the_rest(
    wanted: int, open_files: int, cap: int
) -> None:
    assert connection_cap(wanted, open_files) == cap


@pytest.fixture
def nofile() -> Iterator[tuple[int, int]]:
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        yield before
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_raise_open_files_to_the_hard_limit(nofile: tuple[int, int]) -> None:
    hard = nofile[1]
    low = min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    assert raise_open_files(wanted=low + 1) == (min(low + 1, hard), hard)
    assert raise_open_files() == (hard, hard)
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)


def test_limits_are_validated() -> None:
    assert HttpLimits() == HttpLimits(10.0, 30.0, 2000)
    for bad in ({"header_timeout": 0}, {"body_timeout": -1}, {"max_connections": 0}):
        with pytest.raises(ValueError):
            HttpLimits(**bad)


def test_error_bytes_is_a_whole_response() -> None:
    raw = error_bytes(503, "capacity_exhausted", "full", (("retry-after", "5"),))
    head, body = raw.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    assert set(lines[1:]) == {
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        "retry-after: 5",
    }
    assert json.loads(body) == {"error": {"code": "capacity_exhausted", "message": "full"}}


def test_each_server_gets_its_own_protocol_state() -> None:
    one, two = protocol_for(HttpLimits(max_connections=5)), protocol_for(HttpLimits())
    assert issubclass(one, GuardedH11Protocol)
    assert one.limits.max_connections == 5 and two.limits.max_connections == 2000
    assert one.waiting is not two.waiting and one.refusing is not two.refusing

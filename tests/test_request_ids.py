"""Request ids in what a failing request leaves behind: the 500 body a client sees and the server's
log line with the traceback, which must name the same id."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from redis import Redis

from service.app import create_app
from service.cli import _name_the_request
from service.settings import Settings

FORMAT = "%(levelname)s %(name)s: %(message)s%(request)s"  # configure_logging's, less the time


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter(FORMAT))
        self.addFilter(_name_the_request)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture()
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("service.app")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def test_an_unexpected_error_gives_the_client_the_id_its_traceback_is_logged_under(
        redis: Redis, settings: Settings, lines: Lines) -> None:
    app = create_app(settings, redis)

    def broken() -> str:
        raise RuntimeError("a bug")

    app.add_url_rule("/broken", view_func=broken)  # a bug stands in: no route of Redline's fails on purpose
    response = app.test_client().get("/broken", headers={"X-Request-ID": "trace-7f3a"})
    assert response.status_code == 500 and response.headers["X-Request-ID"] == "trace-7f3a"
    assert response.get_json()["error"]["request_id"] == "trace-7f3a"
    assert "a bug" not in response.get_data(as_text=True)  # no internals to the client
    [line] = [line for line in lines.lines if "unhandled error" in line]
    first, *traceback = line.splitlines()
    assert first == "ERROR service.app: unhandled error in GET /broken [request trace-7f3a]"
    assert traceback[-1] == "RuntimeError: a bug"


def test_lines_logged_outside_a_request_name_none(lines: Lines) -> None:
    logging.getLogger("service.app").warning("starting")
    assert lines.lines == ["WARNING service.app: starting"]

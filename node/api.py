"""The HTTP API: health, metrics, jobs and audit queries (read-only, JSON).

Served by the standard library's threading HTTP server on ``http_port``.
Audit queries made here are themselves audited (DCM 110112 Query).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

from sqlalchemy import func, select, text

from node import __version__, audit
from node.db import Database, Delivery, Job, Series

logger = logging.getLogger(__name__)


class _Scp(Protocol):
    """What the API needs to know of the SCP (for health)."""

    @property
    def running(self) -> bool:
        """Whether the DICOM server accepts connections."""
        ...


def parse_time(value: str, *, end: bool = False) -> dt.datetime:
    """An ISO 8601 date or date-time, as naive UTC (how times are stored).

    A date alone stands for its whole day (UTC): its first instant, or with
    ``end`` (an upper bound, ``--until``) its last, so that the day is included.
    """
    parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    if end and _is_date(value):
        parsed += dt.timedelta(days=1, microseconds=-1)
    return parsed


def _limit(text: str, most: int) -> int:
    """A ``limit`` query parameter: at least 1, at most ``most``."""
    value = int(text)
    if value < 1:
        raise ValueError(f"limit must be at least 1, got {value}")
    return min(value, most)


def _is_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


class ApiServer:
    """A small read-only HTTP API in a background thread."""

    def __init__(self, host: str, port: int, db: Database, scp: _Scp) -> None:
        self.db = db
        self.scp = scp
        api = self

        class Handler(BaseHTTPRequestHandler):
            server_version = f"radnode/{__version__}"

            def log_message(self, format: str, *args: Any) -> None:
                logger.debug("http: " + format, *args)

            def do_GET(self) -> None:
                api.handle(self)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when configured as an ephemeral one)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        """Route one GET request."""
        url = urlparse(request.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/health":
                status, body, ctype = self._health()
            elif url.path == "/metrics":
                status, body, ctype = HTTPStatus.OK, self._metrics(), "text/plain; version=0.0.4"
            elif url.path == "/jobs":
                status, body, ctype = HTTPStatus.OK, self._jobs(query), "application/json"
            elif url.path == "/audit":
                client = f"http:{request.client_address[0]}"
                status, body, ctype = (
                    HTTPStatus.OK,
                    self._audit(query, client),
                    "application/x-ndjson",
                )
            else:
                status, body, ctype = (
                    HTTPStatus.NOT_FOUND,
                    '{"error": "not found"}',
                    "application/json",
                )
        except ValueError as exc:
            status, body, ctype = (
                HTTPStatus.BAD_REQUEST,
                json.dumps({"error": str(exc)}),
                "application/json",
            )
        except Exception as exc:  # the edge of a request
            logger.exception("HTTP request failed")
            status, body, ctype = (
                HTTPStatus.INTERNAL_SERVER_ERROR,
                json.dumps({"error": type(exc).__name__}),
                "application/json",
            )
        data = body.encode("utf-8")
        request.send_response(status)
        request.send_header("Content-Type", ctype)
        request.send_header("Content-Length", str(len(data)))
        request.end_headers()
        request.wfile.write(data)

    def _health(self) -> tuple[HTTPStatus, str, str]:
        db_ok = True
        try:
            with self.db.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:  # any database failure makes the node unhealthy
            logger.exception("health check: database unreachable")
            db_ok = False
        ok = db_ok and self.scp.running
        body = {"status": "ok" if ok else "degraded", "database": db_ok, "dicom": self.scp.running}
        body["version"] = __version__
        status = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
        return status, json.dumps(body), "application/json"

    def _metrics(self) -> str:
        lines = []
        with self.db.read() as session:
            for name, column in (
                ("radnode_series", Series.state),
                ("radnode_jobs", Job.state),
                ("radnode_deliveries", Delivery.state),
            ):
                lines.append(f"# TYPE {name} gauge")
                counts = session.execute(select(column, func.count()).group_by(column)).all()
                for state, count in counts:
                    lines.append(f'{name}{{state="{state}"}} {count}')
        return "\n".join(lines) + "\n"

    def _jobs(self, query: dict[str, str]) -> str:
        limit = _limit(query.get("limit", "100"), 1000)
        stmt = select(Job).order_by(Job.id.desc()).limit(limit)
        if "state" in query:
            stmt = stmt.where(Job.state == query["state"])
        with self.db.read() as session:
            rows = session.execute(stmt).scalars().all()
            return json.dumps(
                [
                    {
                        "id": j.id,
                        "state": j.state,
                        "rule": j.rule,
                        "pipeline": j.pipeline,
                        "series_uid": j.series_uid,
                        "study_uid": j.study_uid,
                        "attempts": j.attempts,
                        "output_series_uid": j.output_series_uid,
                        "outputs": j.output_count,
                        "flagged": j.flagged_count,
                        "error": j.error,
                    }
                    for j in rows
                ]
            )

    def _audit(self, query: dict[str, str], client: str) -> str:
        events = [e for e in query.get("event", "").split(",") if e]
        unknown = [e for e in events if e not in audit.AuditEvent.names()]
        if unknown:
            raise ValueError(f"unknown event {unknown[0]!r}")
        with self.db.session() as session:
            records = audit.query(
                session,
                study_uid=query.get("study"),
                series_uid=query.get("series"),
                events=events,
                since=parse_time(query["since"]) if "since" in query else None,
                until=parse_time(query["until"], end=True) if "until" in query else None,
                limit=_limit(query.get("limit", "1000"), 10000),
            )
            lines = [json.dumps(audit.as_dict(r)) for r in records]
            audit.record(
                session,
                audit.AuditEvent.QUERY,
                actor=client,
                filters=dict(query),
                results=len(records),
            )
        return "\n".join(lines) + ("\n" if lines else "")

"""The ``radnode`` command: serve, audit, verify, train, evaluate."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from node import __version__, audit
from node.db import Database, make_engine
from node.errors import ConfigError
from node.settings import Settings, config_path, load_settings
from pipelines.base import PipelineError

logger = logging.getLogger(__name__)

_AUDIT_COLUMNS = ("id", "ts", "event", "outcome", "actor", "series_uid", "detail")


def _settings(path: str | None, with_registry: bool = True) -> Settings:
    from pipelines.registry import default_registry

    return load_settings(config_path(path), default_registry() if with_registry else None)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from node.__main__ import serve

    _configure_logging(args.verbose)
    return serve(_settings(args.config))


def _cmd_check(args: argparse.Namespace) -> int:
    """Validate the settings and the files they name as ``serve`` would, changing nothing."""
    path = config_path(args.config)
    settings = _settings(args.config)
    _check_files(settings)
    rules = ", ".join(f"{r.name} ({r.pipeline})" for r in settings.rules) or "none"
    print(
        f"{path}: valid. {len(settings.destinations)} destination(s); rules: {rules}; "
        f"data in {settings.node.data_dir}"
    )
    return 0


def _check_files(settings: Settings) -> None:
    """Read the signing identity and TLS files ``serve`` would load; raise ConfigError."""
    from node.dicom.tls import client_context, server_context
    from node.errors import SigningError
    from node.settings import DicomDestination
    from node.signing_identity import check_identity_files, managed_keys_dir

    node = settings.node
    try:
        check_identity_files(managed_keys_dir(node.data_dir), node.signing_key, node.signing_cert)
    except SigningError as exc:
        raise ConfigError(f"node.signing_key / node.signing_cert: {exc}") from None
    if node.tls is not None:
        server_context(node.tls.cert, node.tls.key, node.tls.ca)
    for i, dest in enumerate(settings.destinations):
        if isinstance(dest, DicomDestination) and dest.tls:
            try:
                client_context(dest.tls_ca, dest.tls_cert, dest.tls_key)
            except ConfigError as exc:
                raise ConfigError(f"destinations[{i}] ({dest.name}): {exc}") from None


@contextmanager
def _index(settings: Settings) -> Iterator[Database]:
    """The node's index for a command, closed afterwards."""
    db = Database(make_engine(settings.node.database_url))
    try:
        yield db
    finally:
        db.close()


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _cmd_audit(args: argparse.Namespace) -> int:
    with _index(_settings(args.config, with_registry=False)) as db:
        return _audit(args, db)


def _audit(args: argparse.Namespace, db: Database) -> int:
    from node.api import parse_time

    if args.action == "verify":
        with db.read() as session:
            report = audit.verify_chain(session)
        if report.ok:
            print(f"audit chain intact: {report.records} records")
            return 0
        print(
            f"audit chain BROKEN at record {report.first_broken_id}: {report.reason} "
            f"({report.records} records verified before it)"
        )
        return 1
    for event in args.event or []:
        if event not in audit.AuditEvent.names():
            from pipelines.base import unknown_option_message

            print(unknown_option_message("event", event, audit.AuditEvent.names()), file=sys.stderr)
            return 2
    try:
        since = parse_time(args.since) if args.since else None
        until = parse_time(args.until, end=True) if args.until else None
    except ValueError as exc:
        print(f"not an ISO 8601 time: {exc}", file=sys.stderr)
        return 2
    with db.session() as session:
        records = audit.query(
            session,
            study_uid=args.study,
            series_uid=args.series,
            events=args.event or [],
            since=since,
            until=until,
            limit=args.limit,
        )
        rows = [audit.as_dict(r) for r in records]
        audit.record(
            session,
            audit.AuditEvent.QUERY,
            actor="cli",
            filters={
                k: v
                for k, v in vars(args).items()
                if k in ("study", "series", "event", "since", "until", "limit") and v
            },
            results=len(rows),
        )
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
        return 0
    _print_table(rows)
    return 0


def _cmd_deliveries(args: argparse.Namespace) -> int:
    from node.delivery import Dispatcher

    settings = _settings(args.config, with_registry=False)
    with _index(settings) as db:
        dispatcher = Dispatcher(db, settings, settings.node.data_dir)
        if args.action == "retry":
            count = dispatcher.retry_failed(actor="cli", destination=args.destination)
            print(f"{count} failed deliveries queued again (a running node sends them)")
            return 0
        rows = dispatcher.summary()
    print(f"{'destination':20s} {'state':10s} {'instances':>9s}")
    for destination, state, count in rows:
        print(f"{destination:20s} {state:10s} {count:9d}")
    return 0


def _print_table(rows: list[dict[str, object]]) -> None:
    table = []
    for row in rows:
        detail = row["detail"]
        detail_text = (
            " ".join(f"{k}={v}" for k, v in detail.items()) if isinstance(detail, dict) else ""
        )
        table.append(
            [
                str(row["id"]),
                str(row["ts"]),
                str(row["event"]),
                str(row["outcome"]),
                str(row["actor"]),
                str(row["series_uid"]),
                detail_text[:80],
            ]
        )
    widths = [max([len(h)] + [len(r[i]) for r in table]) for i, h in enumerate(_AUDIT_COLUMNS)]
    print("  ".join(h.ljust(w) for h, w in zip(_AUDIT_COLUMNS, widths, strict=True)).rstrip())
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"({len(table)} records)")


def _verify(rest: Sequence[str]) -> int:
    from node.verify import main as verify_main

    return verify_main(rest)


def _pipeline_command(which: str, pipeline: str, rest: Sequence[str]) -> int:
    from pipelines.registry import default_registry

    entry = default_registry().entry(pipeline)
    command = entry.train if which == "train" else entry.evaluate
    if command is None:
        print(f"pipeline {pipeline!r} has no {which} command", file=sys.stderr)
        return 2
    _configure_logging(False)
    return command(rest)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``radnode``."""
    parser = argparse.ArgumentParser(prog="radnode", description=__doc__)
    parser.add_argument("--version", action="version", version=f"radnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the node")
    serve.add_argument(
        "--config", help="settings file (default $RADNODE_CONFIG or ./settings.toml)"
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    serve.set_defaults(func=_cmd_serve)

    check = sub.add_parser(
        "check",
        help="validate the settings as serve would (keys, rules, pipeline parameters, "
        "weights hashes, signing and TLS files) and exit, changing nothing",
    )
    check.add_argument(
        "--config", help="settings file (default $RADNODE_CONFIG or ./settings.toml)"
    )
    check.set_defaults(func=_cmd_check)

    aud = sub.add_parser("audit", help="query the audit log, or verify its hash chain")
    aud.add_argument("action", nargs="?", choices=["verify"], help="verify the hash chain")
    aud.add_argument("--config", help="settings file")
    aud.add_argument("--study", help="StudyInstanceUID")
    aud.add_argument("--series", help="SeriesInstanceUID")
    aud.add_argument("--event", action="append", help="event name (repeatable)")
    aud.add_argument(
        "--since", help="ISO 8601 date or date/time (UTC unless an offset is given), inclusive"
    )
    aud.add_argument(
        "--until",
        help="ISO 8601 date or date/time (UTC unless an offset is given), inclusive: "
        "a date takes in the whole day, a time is taken to the microsecond "
        "(2026-11-22T10:00 ends at 10:00:00.000000)",
    )
    aud.add_argument(
        "--limit", type=_positive_int, default=None, help="only the latest N matching records"
    )
    aud.add_argument("--format", choices=["table", "json"], default="table")
    aud.set_defaults(func=_cmd_audit)

    dlv = sub.add_parser("deliveries", help="delivery counts; retry deliveries that failed")
    dlv.add_argument("action", nargs="?", choices=["list", "retry"], default="list")
    dlv.add_argument("--config", help="settings file")
    dlv.add_argument("--destination", help="only this destination (retry)")
    dlv.set_defaults(func=_cmd_deliveries)

    # These hand their own arguments to the command they wrap (see main).
    sub.add_parser("verify", help="check outputs' signatures and provenance (FILE... --help)")
    for which in ("train", "evaluate"):
        cmd = sub.add_parser(which, help=f"{which} a pipeline's model (PIPELINE --help)")
        cmd.add_argument("pipeline", help="a registered pipeline, e.g. ct-denoise or mr-accel")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``radnode``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["verify"]:
            return _verify(argv[1:])
        if argv[:1] in (["train"], ["evaluate"]) and len(argv) > 1 and not argv[1].startswith("-"):
            return _pipeline_command(argv[0], argv[1], argv[2:])
    except (ConfigError, PipelineError) as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    if args.command in ("verify", "train", "evaluate"):
        build_parser().parse_args([args.command, "--help"])
    try:
        code: int = args.func(args)
    except (ConfigError, PipelineError) as exc:
        print(f"radnode: {exc}", file=sys.stderr)
        return 2
    return code

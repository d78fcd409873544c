"""``pme-exporter run | migrate | report | status | dead-letters | replay | retention | verify |
config | healthcheck | demo``. Exit codes: ``errors.EXITS`` and the ``EXIT_*`` constants."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from types import FrameType

import psycopg

from pme_exporter import __version__
from pme_exporter.decode import TIMESTAMP_TEXT
from pme_exporter.errors import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_MIGRATION,
    EXIT_MISMATCH,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_THRESHOLD,
    EXIT_USAGE,
    ConfigError,
    Stopped,
    exit_for,
    reason_of,
)
from pme_exporter.logs import configure_logging, ledger_log
from pme_exporter.ops import reports
from pme_exporter.schema import BY_TABLE, RETAINED
from pme_exporter.settings import Settings, described, unknown_variables

log = logging.getLogger("pme_exporter")

_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pme-exporter",
        description="Mirror the PME ledger topic into PostgreSQL. Settings come from the environment (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume the ledger topic and keep PostgreSQL in step (the worker)")
    sub.add_parser("migrate", help="apply the SQL migrations in sql/ and exit")
    sub.add_parser(
        "config",
        help=f"print the effective settings, secrets hidden; exit {EXIT_CONFIG} if any setting is invalid",
    )
    sub.add_parser(
        "healthcheck",
        help=f"exit {EXIT_OK} if /healthz on PME_METRICS_PORT answers 200, else {EXIT_FAILURE} (container probes)",
    )
    status = sub.add_parser(
        "status", help="per partition: Kafka's end, the exported and the committed offset, lag; dead letters"
    )
    status.add_argument("--json", action="store_true", help="print JSON")
    status.add_argument(
        "--max-lag", type=_whole, help=f"exit {EXIT_THRESHOLD} if more messages than this wait"
    )
    status.add_argument(
        "--max-dead-letters",
        type=_whole,
        help=f"exit {EXIT_THRESHOLD} if there are more dead letters than this",
    )
    dead = sub.add_parser("dead-letters", help="list, show or redrive dead letters")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    for action in ("list", "redrive"):
        chosen = dead_sub.add_parser(action, help=f"{action} the dead letters the filters select")
        chosen.add_argument("--stage", choices=("decode", "database"))
        chosen.add_argument("--reason", help="e.g. invalid_json or sqlstate_22001")
        chosen.add_argument("--table", help="database refusals of this table")
        chosen.add_argument("--older-than", type=_duration, help="e.g. 30m, 12h, 7d")
        chosen.add_argument("--limit", type=_positive_int)
        chosen.add_argument("--json", action="store_true", help="print JSON")
    show = dead_sub.add_parser("show", help="one dead letter in full; the raw value as text or hex")
    show.add_argument("id", type=_positive_int)
    show.add_argument("--json", action="store_true", help="print JSON (the raw key and value as text or hex)")
    replay = sub.add_parser("replay", help="make the next run read the topic again from a point")
    start = replay.add_mutually_exclusive_group(required=True)
    start.add_argument("--from-beginning", action="store_true", help="every partition from its first offset")
    start.add_argument(
        "--from-time", type=rfc3339_instant, help="the first offsets at or after an RFC 3339 time"
    )
    start.add_argument("--partition", type=_whole, help="one partition, with --offset")
    start.add_argument(
        "--truncate", action="store_true", help="empty the ledger tables and read everything again"
    )
    replay.add_argument("--offset", type=_whole, help="with --partition")
    replay.add_argument(
        "--tables",
        type=_tables_of(tuple(BY_TABLE), "ledger tables"),
        help="with --truncate: rebuild only these tables (and the tables that reference them)",
    )
    replay.add_argument("--force", action="store_true", help="even while workers of the group are active")
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    replay.add_argument(
        "--json", action="store_true", help="print the plan, and whether it was applied, as JSON"
    )
    retention = sub.add_parser("retention", help="archive or purge rows whose latest state is old")
    actions = retention.add_subparsers(dest="action", required=True)
    for action, does in (
        ("archive", "move old rows into <table>_archive, children first"),
        ("purge", "delete old rows (and their archives) for good, children first"),
    ):
        chosen = actions.add_parser(action, help=does, description=does)
        chosen.add_argument(
            "--older-than", type=_duration, required=True, help="e.g. 90d or 1y (365 days) before now"
        )
        chosen.add_argument(
            "--tables",
            type=_tables_of(RETAINED, "retained tables"),
            help="comma-separated, default: all of " + ",".join(RETAINED),
        )
        chosen.add_argument("--batch-size", type=_int_at_least(1), default=1000, help="rows per transaction")
        chosen.add_argument("--pause-ms", type=_int_at_least(0), default=0, help="pause between batches")
        chosen.add_argument("--dry-run", action="store_true", help="print what would move; change nothing")
        chosen.add_argument("--yes", action="store_true", help="purge without asking")
        chosen.add_argument("--json", action="store_true", help="print JSON")
    verify = sub.add_parser(
        "verify", help="reconcile the tables with the topic up to the exported offsets (read-only)"
    )
    verify.add_argument(
        "--sample", type=_fraction, default=1.0, help="check this fraction of keys, 0 < P <= 1 (default 1)"
    )
    verify.add_argument("--show", type=_positive_int, default=20, help="mismatches to print (default 20)")
    verify.add_argument("--json", action="store_true", help="print JSON")
    demo = sub.add_parser(
        "demo", help="start the local stack, export a generated trading day, print what landed"
    )
    demo.add_argument(
        "--orders", type=_positive_int, default=2_000, help="orders in the generated day (default 2000)"
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed of the generated day")
    report = sub.add_parser(
        "report",
        help="print one of the report views (README: Reports)",
        description="Print a report view. Filters are bound as parameters, never formatted into SQL.",
    )
    report.add_argument("name", nargs="?", help="the report, without the report_ prefix (see --list)")
    report.add_argument(
        "--list", action="store_true", help="list the reports, which are materialized and their last refresh"
    )
    report.add_argument(
        "--refresh",
        action="store_true",
        help="refresh the materialized reports (the named one, or all) without blocking readers",
    )
    report.add_argument(
        "--live", action="store_true", help="read the live view even where a materialized copy exists"
    )
    report.add_argument("--account", help="only this account (reports that have one)")
    report.add_argument("--from", dest="date_from", type=_iso_date, help="first day, YYYY-MM-DD")
    report.add_argument("--to", dest="date_to", type=_iso_date, help="last day, YYYY-MM-DD (inclusive)")
    report.add_argument("--format", choices=reports.FORMATS, default="table", help="default: table")
    report.add_argument("--limit", type=_positive_int, help="at most this many rows")
    report.add_argument(
        "--tz",
        dest="time_zone",
        help="time zone for days and months, e.g. Asia/Jakarta (default: the server's)",
    )
    return parser


_DURATION = re.compile(r"([0-9]{1,9})([smhdwy])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


def _duration(raw: str) -> float:
    found = _DURATION.fullmatch(raw.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a duration such as 90s, 30m, 12h, 7d, 2w or 1y")
    return int(found.group(1)) * _UNIT_S[found.group(2)]


def rfc3339_instant(raw: str) -> int:
    """An RFC 3339 instant (as the ledger writes them), in epoch milliseconds."""
    if TIMESTAMP_TEXT.fullmatch(raw) is None:
        raise argparse.ArgumentTypeError(f"{raw!r} is not an RFC 3339 time such as 2025-11-28T09:00:00+07:00")
    try:
        # RFC 3339 allows a lowercase t and z; fromisoformat does not.
        return int(datetime.fromisoformat(raw.upper()).timestamp() * 1000)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date that exists") from None


def _tables_of(allowed: Sequence[str], kind: str) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: comma-separated names, each one of ``allowed``."""

    def parse(raw: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in raw.split(","))
        unknown = [name for name in names if name not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"not {kind}: {unknown}; choose from {', '.join(allowed)}")
        return names

    return parse


def _fraction(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not 0.0 < value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most 1: {raw!r}")
    return value


def _iso_date(raw: str) -> date:
    # fromisoformat alone also takes 20251128 and 2025-W48-5; operators type YYYY-MM-DD.
    try:
        if not _DATE.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a date of the form YYYY-MM-DD") from None


def _report(args: argparse.Namespace, settings: Settings, parser: argparse.ArgumentParser) -> int:
    if args.list:
        return _report_list(settings)
    if args.refresh:
        return _report_refresh(args, settings)
    if args.name is None:
        parser.error("report: name a report, or use --list or --refresh")
    filters = reports.Filters(
        account=args.account,
        date_from=args.date_from,
        date_to=args.date_to,
        limit=args.limit,
        time_zone=args.time_zone,
        live=args.live,
    )
    try:
        report = reports.find(args.name)
        reports.query(report, filters)  # refuses a filter the report lacks before connecting
    except reports.ReportError as exc:
        print(f"pme-exporter report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    with psycopg.connect(settings.report_conninfo(), autocommit=True) as conn:
        try:
            source = reports.source(conn, report, filters)
            columns, rows = reports.fetch(conn, report, filters)
        except psycopg.errors.UndefinedTable:
            print(
                f"pme-exporter report: view {report.view} or its materialized copy is missing;"
                " run pme-exporter migrate",
                file=sys.stderr,
            )
            return EXIT_MIGRATION
        except psycopg.errors.ObjectNotInPrerequisiteState:  # 55000: never refreshed
            print(
                f"pme-exporter report: {report.materialized_view} has never been refreshed;"
                " run pme-exporter report --refresh, or read the live view with --live",
                file=sys.stderr,
            )
            return EXIT_USAGE
        except psycopg.errors.InvalidParameterValue as exc:  # 22023, e.g. an unknown time zone
            print(f"pme-exporter report: {exc.diag.message_primary}", file=sys.stderr)
            return EXIT_USAGE
    reports.render(columns, rows, args.format, sys.stdout)
    # On stderr, so that CSV and JSON on stdout stay data only.
    print(source.describe(datetime.now(UTC)), file=sys.stderr)
    return EXIT_OK


def _report_list(settings: Settings) -> int:
    """Needs no database; the refresh times are added when it answers."""
    refreshed: dict[str, tuple[datetime, float, int]] | None = None
    try:
        with psycopg.connect(settings.report_conninfo(), autocommit=True, connect_timeout=5) as conn:
            refreshed = reports.refreshes(conn)
    except (psycopg.Error, ConfigError) as exc:
        print(f"pme-exporter report: refresh times unknown: {exc}".splitlines()[0], file=sys.stderr)
    for r in reports.REPORTS:
        offered = [f for f, col in (("--account", r.account_column), ("--from/--to", r.date_column)) if col]
        if not r.materialized:
            kind = "live"
        elif refreshed is None:
            kind = "materialized"
        elif r.name in refreshed:
            kind = f"materialized, refreshed {refreshed[r.name][0].isoformat(timespec='seconds')}"
        else:
            kind = "materialized, never refreshed"
        print(f"{r.name:<20} {r.title}{'  [' + ', '.join(offered) + ']' if offered else ''}  ({kind})")
    return EXIT_OK


def _report_refresh(args: argparse.Namespace, settings: Settings) -> int:
    """Refreshes on the primary: a replica is read-only."""
    try:
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            started = time.monotonic()
            stored = reports.refresh(conn, [args.name] if args.name else None)
    except reports.ReportError as exc:
        print(f"pme-exporter report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except psycopg.errors.UndefinedFunction:
        print("pme-exporter report: refresh_report() is missing; run pme-exporter migrate", file=sys.stderr)
        return EXIT_MIGRATION
    for name, count in stored.items():
        print(f"refreshed {name}: {count} rows")
    print(f"refreshed {len(stored)} report(s) in {time.monotonic() - started:.1f} s")
    return EXIT_OK


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number no smaller than ``minimum``."""

    def parse(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is less than {minimum}")
        return value

    return parse


_positive_int = _int_at_least(1)
_whole = _int_at_least(0)


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from pme_exporter.ops.status import read_status

    status = read_status(settings)
    if args.json:
        print(
            json.dumps(
                dataclasses.asdict(status) | {"lag_messages": status.lag_messages}, default=str, indent=2
            )
        )
    else:
        print(f"topic {status.topic}, group {status.group}, last flush {status.last_flush or 'never'}")
        print(f"{'partition':>9} {'end':>12} {'exported':>12} {'committed':>12} {'lag':>10} {'lag s':>8}")
        for p in status.partitions:
            print(
                f"{p.partition:>9} {p.end_offset:>12} {_or_dash(p.exported_offset):>12}"
                f" {_or_dash(p.committed_offset):>12} {p.lag_messages:>10} {p.lag_seconds:>8.1f}"
            )
        print(
            f"dead letters: {status.dead_letter_count}"
            + "".join(f"\n  {k}: {n}" for k, n in status.dead_letters.items())
        )
        print(f"parked children: {status.parked_children}")
    over = []
    if args.max_lag is not None and status.lag_messages > args.max_lag:
        over.append(f"lag {status.lag_messages} > {args.max_lag}")
    if args.max_dead_letters is not None and status.dead_letter_count > args.max_dead_letters:
        over.append(f"dead letters {status.dead_letter_count} > {args.max_dead_letters}")
    if over:
        print(f"pme-exporter status: over the threshold: {', '.join(over)}", file=sys.stderr)
        return EXIT_THRESHOLD
    return EXIT_OK


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    from pme_exporter.ops import dead_letters

    if args.action == "show":
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            letter = dead_letters.show_dead_letter(conn, args.id)
        if letter is None:
            print(f"pme-exporter dead-letters: no dead letter {args.id}", file=sys.stderr)
            return EXIT_USAGE
        if args.json:
            raw = {"msg_key": dead_letters.readable(letter.pop("msg_key")),
                   "msg_value": dead_letters.readable(letter.pop("msg_value"))}  # fmt: skip
            print(json.dumps(letter | raw, default=str, indent=2))
            return EXIT_OK
        for name in (
            "id",
            "topic",
            "partition",
            "offset",
            "stage",
            "reason",
            "sqlstate",
            "error",
            "created_at",
        ):
            print(f"{name}: {letter[name]}")
        print(f"key: {dead_letters.readable(letter['msg_key'])}")
        print(f"value:\n{dead_letters.readable(letter['msg_value'])}")
        return EXIT_OK
    chosen = dead_letters.DeadLetterFilter(args.stage, args.reason, args.table, args.older_than, args.limit)
    if args.action == "list":
        with psycopg.connect(settings.conninfo(), autocommit=True) as conn:
            rows = dead_letters.list_dead_letters(conn, settings.kafka_topic, chosen)
    else:
        rows = [dataclasses.asdict(r) for r in dead_letters.redrive(settings, chosen)]
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    else:
        if not rows:
            print(f"pme-exporter dead-letters: none match on topic {settings.kafka_topic}", file=sys.stderr)
        for row in rows:
            print("  ".join(f"{k}={'-' if v is None else v}" for k, v in row.items()))
        if args.action == "redrive":
            landed = sum(1 for r in rows if r["landed"])
            print(f"{landed} landed, {len(rows) - landed} still refused")
    return EXIT_OK


def _replay(args: argparse.Namespace, settings: Settings, parser: argparse.ArgumentParser) -> int:
    from pme_exporter.ops import replay

    if (args.partition is None) != (args.offset is None):
        parser.error("replay: --partition and --offset go together")
    if args.tables and not args.truncate:
        parser.error("replay: --tables rebuilds tables, so it goes with --truncate")
    members = replay.active_members(settings)
    if members and not args.force:
        print(
            f"pme-exporter replay: {members} worker(s) of group {settings.kafka_group_id} are active; "
            "stop them first (or --force)",
            file=sys.stderr,
        )
        return EXIT_REFUSED
    try:
        plan = replay.plan_replay(
            settings,
            from_beginning=args.from_beginning,
            from_time_ms=args.from_time,
            partition_offset=None if args.partition is None else (args.partition, args.offset),
            truncate=args.truncate,
            tables=args.tables,
        )
    except replay.ReplayRefused as exc:
        print(f"pme-exporter replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    # With --json the plan is said on stderr, and stdout holds only the JSON.
    say = sys.stderr if args.json else sys.stdout
    print(f"The next run of group {settings.kafka_group_id} reads topic {plan.topic} again from:", file=say)
    for p, o in sorted(plan.targets.items()):
        print(f"  partition {p}: offset {o}", file=say)
    if plan.truncate and plan.tables:
        print(f"after emptying {', '.join(plan.tables)}; the other tables are left as they are.", file=say)
    elif plan.truncate:
        print("after emptying every ledger table, the dead letters and the parked children.", file=say)
    if not args.yes and not _confirmed("replay"):
        return EXIT_REFUSED
    replay.apply_replay(settings, plan)
    if args.json:
        print(json.dumps(dataclasses.asdict(plan) | {"applied": True}, indent=2))
    else:
        print("Done: start the workers.")
    return EXIT_OK


def _confirmed(command: str) -> bool:
    """Whether a person typed yes; without a terminal, never (the caller offers --yes)."""
    if not sys.stdin.isatty():
        print(f"pme-exporter {command}: not confirmed (no terminal); add --yes", file=sys.stderr)
        return False
    if input("Type yes to go on: ").strip() != "yes":
        print(f"pme-exporter {command}: not confirmed; nothing changed", file=sys.stderr)
        return False
    return True


def _retention(args: argparse.Namespace, settings: Settings, stop: threading.Event) -> int:
    from pme_exporter.ops.retention import run_retention

    tables = args.tables or RETAINED
    if args.action == "purge" and not args.dry_run and not args.yes:
        print(
            f"pme-exporter retention purge deletes rows of {', '.join(tables)} (and their archives) for good."
        )
        if not _confirmed("retention"):
            return EXIT_REFUSED
    _install_signal_handlers(stop)
    outcomes = run_retention(
        settings.conninfo(),
        action=args.action,
        older_than_s=args.older_than,
        tables=tables,
        batch_size=args.batch_size,
        pause_s=args.pause_ms / 1000,
        dry_run=args.dry_run,
        stop=stop.is_set,
    )
    if args.json:
        print(json.dumps([dataclasses.asdict(o) for o in outcomes], indent=2))
    else:
        verb = {"archive": "archived", "purge": "purged"}[args.action]
        for o in outcomes:
            extra = f" (and {o.archived_purged} from {o.table}_archive)" if o.archived_purged else ""
            print(f"{o.table}: {o.rows} row(s) {'would be ' + verb if args.dry_run else verb}{extra}")
    if stop.is_set():
        print("pme-exporter retention: stopped by a signal; run it again to go on", file=sys.stderr)
    return EXIT_OK


def _verify(args: argparse.Namespace, settings: Settings) -> int:
    from pme_exporter.ops.verify import VERDICTS, print_progress, verify_topic

    result = verify_topic(settings, sample=args.sample, keep=args.show, progress=print_progress)
    if args.json:
        print(json.dumps(dataclasses.asdict(result) | {"ok": result.ok}, default=str, indent=2))
    else:
        exported = sum(result.bounds.values())
        print(
            f"topic {result.topic}: {result.messages} messages read up to the exported offsets ({exported}),"
            f" {result.tombstones} tombstones, {result.decode_failures} failing decoding,"
            f" {result.refused} with values their columns cannot hold"
            + ("" if result.sample >= 1 else f", keys sampled: {result.sample:g}")
        )
        shown = VERDICTS
        print(f"{'table':<16}{'messages':>10}" + "".join(f"{v:>12}" for v in shown))
        for table, counts in result.tables.items():
            print(f"{table:<16}{counts['messages']:>10}" + "".join(f"{counts[v]:>12}" for v in shown))
        for mismatch in result.mismatches:
            print(mismatch.line())
        more = result.mismatch_count - len(result.mismatches)
        if more > 0:
            print(f"... and {more} more")
        print("verify: all match" if result.ok else f"verify: {result.mismatch_count} mismatch(es)")
    return EXIT_OK if result.ok else EXIT_MISMATCH


def _healthcheck(port: int) -> int:
    if port == 0:
        print("pme-exporter healthcheck: the endpoint is off (PME_METRICS_PORT=0)", file=sys.stderr)
        return EXIT_FAILURE
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return EXIT_OK if response.status == 200 else EXIT_FAILURE
    except OSError as exc:
        print(f"pme-exporter healthcheck: :{port}/healthz did not answer: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only a flag: the run loop notices it, flushes and exits

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None, stop: threading.Event | None = None) -> int:
    """The command line; ``stop`` is the flag that SIGTERM and SIGINT set (``__main__``
    installs its handlers before this module is imported)."""
    stop = stop or threading.Event()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "run":
        _install_signal_handlers(stop)  # stops cleanly, within its deadline
    else:  # retention installs its own after its prompt
        if stop.is_set():
            return EXIT_OK  # asked to stop before it began
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"pme-exporter: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(level=settings.log_level_number, json_lines=settings.log_format == "json")
    for name, near in unknown_variables(os.environ):
        log.warning("Unknown variable %s is ignored%s", name, f"; did you mean {near}?" if near else "")
    if args.command == "healthcheck":
        return _healthcheck(settings.metrics_port)
    try:
        if not (args.command == "report" and args.list):  # needs no connection, so no files
            settings.check_files()
        if args.command in ("config", "run") and settings.kafka_extra:
            from pme_exporter.kafka_config import check_kafka_properties

            check_kafka_properties(settings.kafka_config())
        if args.command == "config":
            try:
                for name, value in described(settings):
                    print(f"{name}={value}", flush=True)
            except BrokenPipeError:  # `config | head`: the reader has what it wanted
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK
        if args.command == "migrate":
            from pme_exporter.migrate import migrate

            applied = migrate(settings.conninfo(), publication=settings.publication)
            print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
            return EXIT_OK
        if args.command == "report":
            return _report(args, settings, parser)
        if args.command == "status":
            return _status(args, settings)
        if args.command == "dead-letters":
            return _dead_letters(args, settings)
        if args.command == "replay":
            return _replay(args, settings, parser)
        if args.command == "retention":
            return _retention(args, settings, stop)
        if args.command == "verify":
            return _verify(args, settings)
        if args.command == "demo":
            from pme_exporter.devtools.demo import run_demo

            return run_demo(settings, orders=args.orders, seed=args.seed)
        from pme_exporter.worker import run_exporter

        run_exporter(settings, stop)
        return EXIT_OK
    except Stopped as exc:
        ledger_log(log).info("%s; nothing was written", exc)
        return EXIT_OK
    except Exception as exc:
        known = exit_for(exc)
        if known is None:
            log.exception("pme-exporter failed")
            return EXIT_FAILURE
        code, words = known
        log.error("%s: %s", words, reason_of(exc))
        return code


if __name__ == "__main__":
    sys.exit(main())

"""``pme-exporter run | migrate | demo``; settings come from the environment.

Exit codes (errors.EXIT_*): 0 ok, 2 usage, 3 configuration, 4 database,
5 Kafka, 6 migration, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import psycopg

from pme_exporter import __version__
from pme_exporter.errors import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_FAILURE,
    EXIT_MIGRATION,
    EXIT_OK,
    ConfigError,
    MigrationError,
)
from pme_exporter.settings import Settings

log = logging.getLogger("pme_exporter")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pme-exporter",
        description="Mirror the PME ledger topic into PostgreSQL. Settings come from the environment (see README).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume the ledger topic and keep PostgreSQL in step (the worker)")
    sub.add_parser("migrate", help="apply the SQL migrations in sql/ and exit")
    demo = sub.add_parser(
        "demo", help="start the local stack, export a generated trading day, print what landed"
    )
    demo.add_argument(
        "--orders", type=_positive_int, default=2_000, help="orders in the generated day (default 2000)"
    )
    demo.add_argument("--seed", type=int, default=7, help="random seed of the generated day")
    return parser


def _positive_int(raw: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive")
    return value


def _install_signal_handlers(stop: threading.Event) -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()  # only a flag: the run loop notices it, flushes and exits

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        print(f"pme-exporter: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logging.basicConfig(
        level=settings.log_level_number, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    try:
        if args.command == "migrate":
            from pme_exporter.migrate import migrate

            applied = migrate(settings.conninfo())
            print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
            return EXIT_OK
        if args.command == "demo":
            from pme_exporter.demo import run_demo

            return run_demo(settings, orders=args.orders, seed=args.seed)
        from pme_exporter.app import run_exporter

        stop = threading.Event()
        _install_signal_handlers(stop)
        run_exporter(settings, stop)
        return EXIT_OK
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_CONFIG
    except MigrationError as exc:
        log.error("migration error: %s", exc)
        return EXIT_MIGRATION
    except psycopg.OperationalError as exc:
        log.error("database unreachable: %s", exc)
        return EXIT_DATABASE
    except Exception:
        log.exception("pme-exporter failed")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())

"""Every command against an unmigrated database, an unreachable database and an unreachable Kafka:
one clear line, its documented exit code (README "Commands and exit codes"), never a traceback."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import pytest

from pme_exporter.devtools.stack import exporter_env
from pme_exporter.errors import EXIT_DATABASE, EXIT_FAILURE, EXIT_KAFKA, EXIT_MIGRATION, EXIT_OK, EXIT_USAGE
from pme_exporter.settings import Settings

COMMANDS: dict[str, tuple[str, ...]] = {
    "run": ("run",),
    "migrate": ("migrate",),
    "config": ("config",),
    "healthcheck": ("healthcheck",),
    "status": ("status",),
    "dead-letters list": ("dead-letters", "list"),
    "dead-letters show": ("dead-letters", "show", "1"),
    "dead-letters redrive": ("dead-letters", "redrive"),
    "replay": ("replay", "--from-beginning", "--force", "--yes"),
    "verify": ("verify",),
    "retention": ("retention", "archive", "--older-than", "1d"),
    "report": ("report", "order_book"),
    "report --list": ("report", "--list"),
}
# The exit code of each command in each condition; "run" migrates, then finds no topic (or no Kafka).
EXPECTED: dict[str, dict[str, int]] = {
    "unmigrated": {
        "run": EXIT_KAFKA,
        "migrate": EXIT_OK,
        "config": EXIT_OK,
        "healthcheck": EXIT_FAILURE,
        "dead-letters show": EXIT_MIGRATION,
        "replay": EXIT_KAFKA,  # its topic is missing too (which run needs, to end)
        "report --list": EXIT_OK,
    },
    "database unreachable": {"config": EXIT_OK, "healthcheck": EXIT_FAILURE, "report --list": EXIT_OK},
    "Kafka unreachable": {
        "migrate": EXIT_OK,
        "config": EXIT_OK,
        "healthcheck": EXIT_FAILURE,
        "dead-letters list": EXIT_OK,
        "dead-letters show": EXIT_USAGE,  # no such dead letter
        "dead-letters redrive": EXIT_OK,
        "retention": EXIT_OK,
        "report": EXIT_OK,
        "report --list": EXIT_OK,
    },
}
DEFAULT = {
    "unmigrated": EXIT_MIGRATION,
    "database unreachable": EXIT_DATABASE,
    "Kafka unreachable": EXIT_KAFKA,
}


@pytest.mark.parametrize("condition", list(EXPECTED))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_ends_in_one_line_and_its_documented_code(
    base_settings: Settings,
    settings: Settings,
    empty_db: str,
    make_topic: Callable[[int], str],
    free_port: int,
    command: str,
    condition: str,
) -> None:
    topic = make_topic(1)
    s = {
        "unmigrated": base_settings.replace(db_name=empty_db, kafka_topic=f"{topic}-missing"),
        "database unreachable": settings.replace(db_port=1, kafka_topic=topic),
        "Kafka unreachable": settings.replace(kafka_url="127.0.0.1:1", kafka_topic=topic),
    }[condition].replace(
        metrics_port=free_port,
        topic_wait_s=2,
        kafka_startup_wait_s=2,
        db_startup_wait_s=2,
        kafka_group_id=topic,
    )
    done = subprocess.run(
        [sys.executable, "-m", "pme_exporter", *COMMANDS[command]],
        env=exporter_env(s),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said[-3000:]
    expected = EXPECTED[condition].get(command, DEFAULT[condition])
    assert done.returncode == expected, said[-3000:]
    if expected != EXIT_OK:
        assert done.stderr.strip(), "a failure says why"

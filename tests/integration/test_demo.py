"""`pme-exporter demo`, the README's first command after the install step, on the running stack."""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys

from tests.stack import Stack


def test_demo_exports_a_trading_day_and_prints_what_landed(stack: Stack) -> None:
    with contextlib.ExitStack() as held:
        with contextlib.suppress(OSError):  # the default metrics port taken: the demo needs none
            held.enter_context(socket.create_server(("0.0.0.0", 9108)))  # noqa: S104
        proc = subprocess.run(
            [sys.executable, "-m", "pme_exporter", "demo", "--orders", "300"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, **stack.env},
        )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "Rows per table:" in out and "Open borrowing by instrument" in out and "Order book by state" in out
    rows_block = out.split("Rows per table:\n", 1)[1].split("\n\n", 1)[0]
    counts = {line.split()[0]: int(line.split()[1]) for line in rows_block.splitlines()}
    assert counts["orders"] == 300 and counts["contracts"] == 2 * counts["trades"] > 0
    assert counts["instruments"] == 12
    assert "(pme-exporter report open_borrowing)" in out and "(pme-exporter report order_book)" in out
    dead = out.split("Dead letters")[1].split("\n\n")[0]
    for reason in (
        "invalid_json",
        "not_an_object",
        "unknown_type",
        "missing_data",
        "missing_key",
        "sqlstate_22001",
    ):
        assert reason in dead, reason
    # The lines it ends with take an operator to its data: status and verify on it.
    exports = re.search(r"export DB_NAME=(\S+) KAFKA_TOPIC=(\S+) PME_GROUP_ID=(\S+)", out)
    assert exports is not None, out[-1500:]
    env = {
        **os.environ,
        **stack.env,
        "DB_NAME": exports[1],
        "KAFKA_TOPIC": exports[2],
        "PME_GROUP_ID": exports[3],
    }
    for command in (["status"], ["verify"]):
        done = subprocess.run(
            [sys.executable, "-m", "pme_exporter", *command],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

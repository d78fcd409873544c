"""Creates (or resets) a SCRAM-SHA-512 user through the broker's admin API, over mTLS.

    kafka_scram.py BOOTSTRAP CERTS_DIR USER PASSWORD_FILE

Run by deploy/local/up --secure with the project's Python (PME_PYTHON), which has
confluent-kafka; authenticates with CERTS_DIR/admin.crt and admin.key, trusts
CERTS_DIR/ca.pem. The password is read from a file so it is never on a command line.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )
except ImportError:
    sys.exit("kafka_scram.py needs confluent-kafka: run `make install` and set PME_PYTHON=.venv/bin/python")


def main() -> int:
    bootstrap, certs, user, password_file = sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
    admin = AdminClient(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SSL",
            "ssl.ca.location": str(certs / "ca.pem"),
            "ssl.certificate.location": str(certs / "admin.crt"),
            "ssl.key.location": str(certs / "admin.key"),
        }
    )
    password = password_file.read_text().strip().encode()
    upsert = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), password
    )
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    print(f"kafka_scram.py: SCRAM-SHA-512 credentials set for {user}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

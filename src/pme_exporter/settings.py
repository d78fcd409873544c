"""The one settings object, read from the environment at the edge of the program.

Inner classes take explicit keyword arguments and never read the environment.
Secrets (``DB_PASSWORD``, ``KAFKA_SASL_PASSWORD``, ``KAFKA_SSL_KEY_PASSWORD``,
the password inside ``DATABASE_URL``) never reach ``repr``, a log line or an
error message. Each of the three passwords may instead be read from a file
named by ``<NAME>_FILE`` (a mounted secret), not both.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pme_exporter.errors import ConfigError
from pme_exporter.kafka_config import CALLBACKS, GUARANTEES, RDKAFKA_PREFIX

T = TypeVar("T")

_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_KAFKA_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _text(raw: str) -> str:
    return raw.strip()


def _upper(raw: str) -> str:
    return raw.strip().upper()


def _lower(raw: str) -> str:
    return raw.strip().lower()


def _url_conninfo(url: str, variable: str) -> str:
    """A ``postgresql://`` URL as a libpq connection string with the worker's bounds."""
    try:
        return make_conninfo(url, **_CONNECTION_BOUNDS)
    except Exception as exc:
        raise ConfigError(f"{variable}: cannot be parsed as a PostgreSQL URL") from exc


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not value > 0 or value == float("inf"):  # also refuses nan
        raise ValueError(raw)
    return value


_KIND: dict[Callable[[str], Any], str] = {int: "whole number", _text: "text", _upper: "text", _lower: "text"}
_KIND[_positive_float] = "positive number"


def setting(
    default: Any, variable: str, parse: Callable[[str], Any], *, secret: bool = False, not_empty: bool = False
) -> Any:
    """A setting's default, the environment variable it is read from and how. A secret stays out of
    repr and may come from a file; a ``not_empty`` one set to nothing is an error, not the default."""
    metadata = {"variable": variable, "parse": parse, "secret": secret, "not_empty": not_empty}
    return field(default=default, repr=not secret, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    kafka_url: str = setting("localhost:9092", "KAFKA_URL", _text, not_empty=True)
    kafka_topic: str = setting("pme-ledger", "KAFKA_TOPIC", _text, not_empty=True)
    kafka_group_id: str = setting("pme-exporter", "PME_GROUP_ID", _text)
    # Static membership: a restarted worker with the same id takes its partitions
    # back at once instead of waiting out the session timeout (use the pod name).
    kafka_group_instance_id: str | None = setting(None, "PME_GROUP_INSTANCE_ID", _text)
    kafka_session_timeout_ms: int = setting(45_000, "PME_KAFKA_SESSION_TIMEOUT_MS", int)
    kafka_security_protocol: str = setting("PLAINTEXT", "KAFKA_SECURITY_PROTOCOL", _upper)
    kafka_sasl_mechanism: str | None = setting(None, "KAFKA_SASL_MECHANISM", _upper)
    kafka_sasl_username: str | None = setting(None, "KAFKA_SASL_USERNAME", _text)
    kafka_sasl_password: str | None = setting(None, "KAFKA_SASL_PASSWORD", str, secret=True)
    kafka_ssl_ca_location: str | None = setting(None, "KAFKA_SSL_CA_LOCATION", _text)
    kafka_ssl_certificate_location: str | None = setting(None, "KAFKA_SSL_CERTIFICATE_LOCATION", _text)
    kafka_ssl_key_location: str | None = setting(None, "KAFKA_SSL_KEY_LOCATION", _text)
    kafka_ssl_key_password: str | None = setting(None, "KAFKA_SSL_KEY_PASSWORD", str, secret=True)
    db_host: str = setting("localhost", "DB_HOST", _text, not_empty=True)
    db_port: int = setting(5432, "DB_PORT", int)
    db_user: str = setting("postgres", "DB_USER", _text, not_empty=True)
    db_password: str = setting("", "DB_PASSWORD", str, secret=True)
    db_name: str = setting("pme", "DB_NAME", _text, not_empty=True)
    db_sslmode: str = setting("prefer", "DB_SSLMODE", _text)
    # The CA that signed the server's certificate (libpq's sslrootcert), for verify-ca/verify-full.
    db_sslrootcert: str | None = setting(None, "DB_SSLROOTCERT", _text)
    database_url: str | None = setting(None, "DATABASE_URL", _text, secret=True, not_empty=True)
    # Where `report` reads (a read replica, README "Read replica"); unset: the database above.
    report_database_url: str | None = setting(
        None, "PME_REPORT_DATABASE_URL", _text, secret=True, not_empty=True
    )
    # The worker refreshes the materialized reports this often (seconds); 0: never, for
    # `pme-exporter report --refresh` from a scheduler instead.
    report_refresh_s: int = setting(0, "PME_REPORT_REFRESH_S", int)
    # `migrate` keeps a publication of this name over the ledger tables, for downstream
    # consumers of the changes (README "Changes flowing out"); unset: none.
    publication: str | None = setting(None, "PME_PUBLICATION", _text, not_empty=True)
    max_batch_events: int = setting(30_000, "PME_MAX_BATCH_EVENTS", int)
    flush_interval_ms: int = setting(500, "PME_FLUSH_INTERVAL_MS", int)
    # An idle lane flushes a batch this old at once (adaptive flushing); 0: wait for N or T.
    flush_linger_ms: int = setting(20, "PME_FLUSH_LINGER_MS", int)
    # Database connections that flush at once, each for its own share of the partitions.
    # On 2 shared cores lanes 1 and 2 are within a few percent of each other from run to run
    # (docs/performance.md, scaling table).
    flush_lanes: int = setting(2, "PME_FLUSH_LANES", int)
    # Events buffered in all lanes' batches, beside the one batch per lane being
    # written. With N = 30000, a bound of 30000 held peak RSS on a 1M backlog
    # to 157 MB where 60000 took 187 MB, at the same speed (README Performance).
    max_buffered_events: int = setting(30_000, "PME_MAX_BUFFERED_EVENTS", int)
    metrics_port: int = setting(9108, "PME_METRICS_PORT", int)
    # A larger message is a dead letter (reason too_large) before it is parsed.
    max_message_bytes: int = setting(1_048_576, "PME_MAX_MESSAGE_BYTES", int)
    log_level: str = setting("INFO", "PME_LOG_LEVEL", _upper)
    log_format: str = setting("text", "PME_LOG_FORMAT", _text)  # or "json", one object a line
    shutdown_deadline_s: float = setting(30.0, "PME_SHUTDOWN_DEADLINE_S", _positive_float)
    ready_max_retry_s: float = setting(30.0, "PME_READY_MAX_RETRY_S", _positive_float)
    # /readyz fails when events have waited this long with no flush committing.
    ready_max_stall_s: float = setting(60.0, "PME_READY_MAX_STALL_S", _positive_float)
    # A flush waits at most this long for a row lock (then retries with backoff),
    # so a worker frozen inside its transaction cannot stall the new owner for long.
    db_lock_timeout_ms: int = setting(5_000, "PME_DB_LOCK_TIMEOUT_MS", int)
    # PostgreSQL ends a session idle inside a transaction this long (a frozen or
    # partitioned worker), releasing its locks; its batch is retried or re-read.
    db_idle_in_transaction_timeout_ms: int = setting(15_000, "PME_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", int)
    # PostgreSQL cancels a statement of the worker that runs this long (retried); the
    # worker itself cuts off a connection that has not answered for 1.5 times this
    # (a peer that stopped forwarding without closing), then reconnects.
    db_statement_timeout_ms: int = setting(60_000, "PME_DB_STATEMENT_TIMEOUT_MS", int)
    # /healthz fails (so an orchestrator restarts the worker) when events have been held
    # this long with no flush committing while no lane is waiting out a database outage,
    # or when the consumer loop has not turned for this long.
    liveness_max_stall_s: float = setting(300.0, "PME_LIVENESS_MAX_STALL_S", _positive_float)
    # The dead-letter breaker (breaker.py): more than this share of the newest
    # window of messages dead-lettered for one reason halts the worker; 1 turns it off.
    breaker_window: int = setting(1_000, "PME_BREAKER_WINDOW", int)
    breaker_ratio: float = setting(0.25, "PME_BREAKER_RATIO", _positive_float)
    # At start-up: "auto" applies pending migrations (the local stack, Compose), "check" only
    # refuses a database with pending or newer ones (workers beside a migration Job), "off"
    # does neither.
    migrate: str = setting("auto", "PME_MIGRATE", _lower)
    # A subscribed topic that does not exist for this long is fatal (EXIT_KAFKA).
    topic_wait_s: float = setting(60.0, "PME_TOPIC_WAIT_S", _positive_float)
    # A topic deleted and created again under the same name (a new topic ID): "restart"
    # exports its new life from its first offset; "stop" ends the worker (EXIT_KAFKA) for an operator to decide.
    topic_recreated: str = setting("restart", "PME_TOPIC_RECREATED", _lower)
    # At start-up, how long to wait for a Kafka broker to answer before EXIT_KAFKA,
    # and for an unreachable database before EXIT_DATABASE.
    kafka_startup_wait_s: float = setting(60.0, "PME_KAFKA_STARTUP_WAIT_S", _positive_float)
    db_startup_wait_s: float = setting(60.0, "PME_DB_STARTUP_WAIT_S", _positive_float)
    # librdkafka properties passed through as they are (PME_RDKAFKA_<NAME>); may hold secrets.
    kafka_extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        _check(self.max_batch_events >= 1, VARIABLE_OF["max_batch_events"], "must be at least 1")
        _check(self.flush_interval_ms >= 1, VARIABLE_OF["flush_interval_ms"], "must be at least 1")
        _check(
            0 <= self.flush_linger_ms <= self.flush_interval_ms,
            VARIABLE_OF["flush_linger_ms"],
            f"must be from 0 to PME_FLUSH_INTERVAL_MS ({self.flush_interval_ms})",
        )
        _check(1 <= self.flush_lanes <= 16, VARIABLE_OF["flush_lanes"], "must be from 1 to 16")
        _check(
            self.publication is None or re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.publication) is not None,
            VARIABLE_OF["publication"],
            "must be a lower-case SQL name: letters, digits and _, at most 63, not starting with a digit",
        )
        _check(
            self.report_refresh_s == 0 or self.report_refresh_s >= 10,
            VARIABLE_OF["report_refresh_s"],
            "must be 0 (never) or at least 10 seconds",
        )
        _check(
            self.max_buffered_events >= self.max_batch_events,
            VARIABLE_OF["max_buffered_events"],
            f"must be at least PME_MAX_BATCH_EVENTS ({self.max_batch_events})",
        )
        _check(self.max_message_bytes >= 1024, VARIABLE_OF["max_message_bytes"], "must be at least 1024")
        _check(0 <= self.metrics_port <= 65535, VARIABLE_OF["metrics_port"], "must be a port from 0 to 65535")
        _check(1 <= self.db_port <= 65535, VARIABLE_OF["db_port"], "must be a port from 1 to 65535")
        _check(
            6_000 <= self.kafka_session_timeout_ms <= 300_000,
            VARIABLE_OF["kafka_session_timeout_ms"],
            "must be from 6000 to 300000 (the broker's default bounds)",
        )
        _check(self.shutdown_deadline_s > 0, VARIABLE_OF["shutdown_deadline_s"], "must be positive")
        _check(self.ready_max_retry_s > 0, VARIABLE_OF["ready_max_retry_s"], "must be positive")
        _check(self.ready_max_stall_s > 0, VARIABLE_OF["ready_max_stall_s"], "must be positive")
        _check(self.db_lock_timeout_ms >= 1, VARIABLE_OF["db_lock_timeout_ms"], "must be at least 1")
        _check(
            self.db_statement_timeout_ms >= 100,
            VARIABLE_OF["db_statement_timeout_ms"],
            "must be at least 100",
        )
        _check(self.liveness_max_stall_s > 0, VARIABLE_OF["liveness_max_stall_s"], "must be positive")
        _check(self.breaker_window >= 10, VARIABLE_OF["breaker_window"], "must be at least 10")
        _check(0 < self.breaker_ratio <= 1, VARIABLE_OF["breaker_ratio"], "must be above 0 and at most 1")
        _check(
            self.db_idle_in_transaction_timeout_ms >= 1000,
            VARIABLE_OF["db_idle_in_transaction_timeout_ms"],
            "must be at least 1000",
        )
        _check(
            self.db_sslmode in _SSLMODES, VARIABLE_OF["db_sslmode"], f"must be one of {', '.join(_SSLMODES)}"
        )
        _check(
            self.log_level in _LOG_LEVELS,
            VARIABLE_OF["log_level"],
            f"must be one of {', '.join(_LOG_LEVELS)}",
        )
        _check(self.log_format in ("text", "json"), VARIABLE_OF["log_format"], "must be text or json")
        _check(
            self.topic_recreated in ("restart", "stop"),
            VARIABLE_OF["topic_recreated"],
            "must be restart or stop",
        )
        _check(self.migrate in ("auto", "check", "off"), VARIABLE_OF["migrate"], "must be auto, check or off")
        _check(
            bool(self.kafka_url.strip()), VARIABLE_OF["kafka_url"], "must name at least one broker host:port"
        )
        for broker in self.kafka_url.split(","):
            host, sep, port = broker.strip().rpartition(":")
            _check(
                bool(sep and host and port.isdigit()),
                VARIABLE_OF["kafka_url"],
                f"broker {broker.strip()!r} is not host:port",
            )
        _check(bool(self.kafka_topic.strip()), VARIABLE_OF["kafka_topic"], "must not be empty")
        _check(bool(self.kafka_group_id.strip()), VARIABLE_OF["kafka_group_id"], "must not be empty")
        _check(
            self.kafka_security_protocol in _KAFKA_PROTOCOLS,
            VARIABLE_OF["kafka_security_protocol"],
            f"must be one of {', '.join(_KAFKA_PROTOCOLS)}",
        )
        if self.kafka_security_protocol.startswith("SASL"):
            _check(
                self.kafka_sasl_mechanism in _SASL_MECHANISMS,
                VARIABLE_OF["kafka_sasl_mechanism"],
                f"must be one of {', '.join(_SASL_MECHANISMS)} when KAFKA_SECURITY_PROTOCOL is SASL_*",
            )
        for attr in ("database_url", "report_database_url"):
            url = getattr(self, attr)
            if url is not None:
                _check(
                    urlsplit(url).scheme in ("postgres", "postgresql"),
                    VARIABLE_OF[attr],
                    "must start with postgresql:// (the value is not shown: it may hold a password)",
                )
                _check_connection_options(_url_conninfo(url, VARIABLE_OF[attr]), VARIABLE_OF[attr])

    def conninfo(self) -> str:
        """The libpq connection string; contains the password, so never log it."""
        if self.database_url is not None:
            return _url_conninfo(self.database_url, VARIABLE_OF["database_url"])
        return make_conninfo(
            host=self.db_host,
            port=self.db_port,
            user=self.db_user,
            password=self.db_password or None,
            dbname=self.db_name,
            sslmode=self.db_sslmode,
            sslrootcert=self.db_sslrootcert,
            connect_timeout=10,
            **_CONNECTION_BOUNDS,
        )

    def report_conninfo(self) -> str:
        """Where reports are read: PME_REPORT_DATABASE_URL, else the worker's database."""
        if self.report_database_url is None:
            return self.conninfo()
        return _url_conninfo(self.report_database_url, VARIABLE_OF["report_database_url"])

    def check_files(self) -> None:
        """Every certificate and key file named is there and readable; else a ConfigError
        naming the variable (before any connection, whose error would be vaguer)."""
        files = (
            "kafka_ssl_ca_location",
            "kafka_ssl_certificate_location",
            "kafka_ssl_key_location",
            "db_sslrootcert",
        )
        for variable, path in ((VARIABLE_OF[attr], getattr(self, attr)) for attr in files):
            if path is None:
                continue
            try:
                with open(path, "rb") as f:
                    f.read(1)
            except FileNotFoundError:
                raise ConfigError(f"{variable}: {path}: no such file") from None
            except IsADirectoryError:
                raise ConfigError(f"{variable}: {path}: is a directory, not a file") from None
            except PermissionError:
                raise ConfigError(f"{variable}: {path}: not readable by this user") from None
            except OSError as exc:
                raise ConfigError(f"{variable}: {path}: cannot be read ({exc.strerror})") from None

    def db_target(self) -> str:
        """Where the database is, for log lines: host, port and name, no secrets."""
        info = conninfo_to_dict(self.conninfo())
        return f"{info.get('host', 'localhost')}:{info.get('port', 5432)}/{info.get('dbname', '')}"

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka settings for the consumer; the caller adds callbacks."""
        config = {prop: getattr(self, attr) for prop, _, attr in KAFKA_PROPERTIES}
        config = {prop: value for prop, value in config.items() if value is not None}
        config.update(self.kafka_extra)
        return config

    def kafka_admin_config(self, **extra: Any) -> dict[str, Any]:
        """The same connection settings without the consumer-group ones, for probes; plus ``extra``
        (``logger=...``, a keyword since librdkafka's names hold dots only)."""
        group_only = ("group.id", "group.instance.id", "session.timeout.ms")
        return {k: v for k, v in self.kafka_config().items() if k not in group_only} | extra

    @property
    def log_level_number(self) -> int:
        return int(logging.getLevelName(self.log_level))

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The variables that make ``from_env`` build these settings again (secrets included)."""
        return {
            name: str(getattr(self, attr))
            for name, attr in ENVIRONMENT_VARIABLES
            if getattr(self, attr) is not None
        } | {RDKAFKA_PREFIX + prop.upper().replace(".", "_"): v for prop, v in self.kafka_extra.items()}

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Builds settings from environment variables; raises ConfigError naming the bad one."""
        values: dict[str, Any] = {}
        env = _with_secret_files(env)
        values["kafka_extra"] = _kafka_pass_through(env)
        for name, attr, parse in _VARIABLES:
            raw = env.get(name)
            if raw is not None and not raw.strip() and name in _NOT_EMPTY:
                raise ConfigError(f"{name}: is set but empty; unset it for the default or give a value")
            if raw is None or raw == "":
                continue
            try:
                values[attr] = parse(raw)
            except ValueError:
                shown = "(hidden)" if attr in _SECRET_ATTRS else repr(raw)
                raise ConfigError(f"{name}: {shown} is not a valid {_KIND[parse]}") from None
        return cls(**values)


# Set on every connection of the worker and the commands. Text travels as UTF-8 whatever
# the server's default. TCP keepalives and tcp_user_timeout let the kernel find a peer that
# is gone without a word (a NAT or firewall dropping state, a failover): an idle
# connection within about 30 s, one with data unacknowledged within 30 s.
_CONNECTION_BOUNDS: dict[str, Any] = {
    "application_name": "pme-exporter",
    "client_encoding": "UTF8",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 4,
    "tcp_user_timeout": 30_000,
}


def _check_connection_options(conninfo: str, variable: str) -> None:
    """What libpq would refuse only when connecting: a port that is no number, an unknown sslmode."""
    options = conninfo_to_dict(conninfo)
    for port in str(options.get("port") or "5432").split(","):
        _check(
            port.isascii() and port.isdigit() and 1 <= int(port) <= 65535,
            variable,
            f"port {port!r} is not a port",
        )
    sslmode = options.get("sslmode")
    _check(
        sslmode is None or sslmode in _SSLMODES, variable, f"sslmode must be one of {', '.join(_SSLMODES)}"
    )
    timeout = options.get("connect_timeout")
    _check(
        timeout is None or str(timeout).isdigit(),
        variable,
        "connect_timeout must be a whole number of seconds",
    )


def _check(ok: bool, variable: str, problem: str) -> None:
    if not ok:
        raise ConfigError(f"{variable}: {problem}")


def _with_secret_files(env: Mapping[str, str]) -> Mapping[str, str]:
    """``env`` with each ``<NAME>_FILE`` secret read into ``<NAME>`` (one trailing newline dropped):
    the secrets above, and any librdkafka property passed through (``PME_RDKAFKA_<NAME>_FILE``)."""
    read: dict[str, str] = {}
    passed = [v[: -len("_FILE")] for v in env if v.startswith(RDKAFKA_PREFIX) and v.endswith("_FILE")]
    for given in (*_SECRET_FILES, *passed):
        path = env.get(f"{given}_FILE")
        if not path:
            continue
        # A property a first-class variable sets is read into that variable (sasl.password
        # into KAFKA_SASL_PASSWORD), so it is judged and hidden like one.
        name = _SET_BY.get(kafka_property(given), given) if given in passed else given
        if env.get(name) or name in read:
            raise ConfigError(f"{name} and {given}_FILE are both set; set one")
        try:
            with open(path, encoding="utf-8") as secret:
                text = secret.read()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise ConfigError(f"{given}_FILE: cannot read {path}: {why}") from None
        read[name] = text[:-1] if text.endswith("\n") else text
    if not read and not passed:
        return env
    return {n: v for n, v in env.items() if not (n.startswith(RDKAFKA_PREFIX) and n.endswith("_FILE"))} | read


# Read by the project's own tools (deploy/local, the tests), not by the worker.
_TOOL_VARIABLES = frozenset(
    {
        "PME_CACHE_DIR",
        "PME_STACK_DIR",
        "PME_KAFKA_PORT",
        "PME_KAFKA_CONTROLLER_PORT",
        "PME_KAFKA_HEAP",
        "PME_PG_REPLICA_PORT",
        "PME_PG_PORT",
        "PME_DB_USER",
        "PME_DB_PASSWORD",
        "PME_DB_NAME",
        "PME_KEEP_STACK",
        "PME_TEST_STACK",
        "PME_PYTHON",
        "PME_SECURE_STACK_DIR",
        "PME_SECURE_KAFKA_PORT",
        "PME_SECURE_PG_PORT",
        "PME_SECURE_STOPPING",
    }
)


# librdkafka properties built from first-class variables: (property, variable, attribute).
# With kafka_config.GUARANTEES and its callbacks, the properties the exporter manages:
# a pass-through of one of them is refused, naming the variable that sets it.
_KAFKA_ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("bootstrap.servers", "kafka_url"),
    ("group.id", "kafka_group_id"),
    ("security.protocol", "kafka_security_protocol"),
    ("session.timeout.ms", "kafka_session_timeout_ms"),
    ("group.instance.id", "kafka_group_instance_id"),
    ("sasl.mechanism", "kafka_sasl_mechanism"),
    ("sasl.username", "kafka_sasl_username"),
    ("sasl.password", "kafka_sasl_password"),
    ("ssl.ca.location", "kafka_ssl_ca_location"),
    ("ssl.certificate.location", "kafka_ssl_certificate_location"),
    ("ssl.key.location", "kafka_ssl_key_location"),
    ("ssl.key.password", "kafka_ssl_key_password"),
)
_SECRET_WORDS = ("password", "secret", "pem", "oauthbearer.config", "token", "key")


def kafka_property(variable: str) -> str:
    """PME_RDKAFKA_SASL_OAUTHBEARER_CONFIG -> sasl.oauthbearer.config"""
    return variable[len(RDKAFKA_PREFIX) :].lower().replace("_", ".")


def is_secret_kafka_property(name: str) -> bool:
    return any(word in name for word in _SECRET_WORDS)


def _kafka_pass_through(env: Mapping[str, str]) -> dict[str, str]:
    extra = {}
    for variable, value in env.items():
        if not variable.startswith(RDKAFKA_PREFIX):
            continue
        name = kafka_property(variable)
        _check(
            bool(name) and name.replace(".", "").isalnum(), variable, "does not name a librdkafka property"
        )
        _check(name not in _SET_BY, variable, f"{name} is set by {_SET_BY.get(name)}; set that instead")
        _check(
            name not in GUARANTEES and name not in CALLBACKS,
            variable,
            f"{name} is set by the exporter itself (its delivery guarantees rest on it)",
        )
        extra[name] = value
    return extra


def unknown_variables(env: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Variables that look like ours (PME_, KAFKA_, DB_) but are not, each with the nearest known name."""
    known = {name for name, _ in ENVIRONMENT_VARIABLES} | {f"{n}_FILE" for n in _SECRET_FILES}
    known |= _TOOL_VARIABLES
    unknown = sorted(
        n
        for n in env
        if n.startswith(("PME_", "KAFKA_", "DB_", "DATABASE_"))
        and n not in known
        and not n.startswith(RDKAFKA_PREFIX)
    )
    return [(n, next(iter(difflib.get_close_matches(n, known, n=1, cutoff=0.75)), None)) for n in unknown]


def described(settings: Settings) -> list[tuple[str, str]]:
    """Every variable and its effective value, secrets redacted: for ``pme-exporter config``."""
    shown = []
    for name, attr in ENVIRONMENT_VARIABLES:
        value = getattr(settings, attr)
        if attr in _SECRET_ATTRS:
            shown.append((name, "(set, hidden)" if value else "(not set)"))
        else:
            shown.append((name, "(not set)" if value is None else str(value)))
    for prop, value in sorted(settings.kafka_extra.items()):
        variable = RDKAFKA_PREFIX + prop.upper().replace(".", "_")
        shown.append((variable, "(set, hidden)" if is_secret_kafka_property(prop) else value))
    return shown


# (environment variable, Settings attribute, parser); README documents each.
# (environment variable, Settings attribute, parser), from the fields; README documents each.
_VARIABLES: tuple[tuple[str, str, Callable[[str], Any]], ...] = tuple(
    (f.metadata["variable"], f.name, f.metadata["parse"]) for f in dataclasses.fields(Settings) if f.metadata
)
_SECRET_ATTRS = frozenset(f.name for f in dataclasses.fields(Settings) if f.metadata.get("secret"))
# Each secret may come from a file named by <NAME>_FILE instead.
_SECRET_FILES = tuple(variable for variable, attr, _ in _VARIABLES if attr in _SECRET_ATTRS)
# Set to nothing, these would silently fall back to a default that points elsewhere.
_NOT_EMPTY = frozenset(
    f.metadata["variable"] for f in dataclasses.fields(Settings) if f.metadata.get("not_empty")
)
# The variable of each attribute, for the checks' messages.
VARIABLE_OF = {attr: name for name, attr, _ in _VARIABLES}
# (librdkafka property, its variable, its attribute)
KAFKA_PROPERTIES = tuple((prop, VARIABLE_OF[attr], attr) for prop, attr in _KAFKA_ATTRIBUTES)
_SET_BY = {prop: variable for prop, variable, _ in KAFKA_PROPERTIES}
_KIND[str] = "text"

ENVIRONMENT_VARIABLES = tuple((name, attr) for name, attr, _ in _VARIABLES)

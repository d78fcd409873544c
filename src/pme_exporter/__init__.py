"""pme-exporter: mirrors the PME ledger topic into PostgreSQL, effectively once."""

__version__ = "0.1.0"

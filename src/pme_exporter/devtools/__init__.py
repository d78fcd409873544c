"""Tools for developing and demonstrating pme-exporter, not needed by the worker.

The generator of trading days, ``pme-exporter demo``, and the helpers that the
demo, the tests and the benchmarks share to find or start servers, make
databases and read progress. Nothing in ``pme_exporter`` outside this package
imports it, except the CLI's ``demo`` command.
"""

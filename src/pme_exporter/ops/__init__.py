"""The operator's commands: status, dead letters, replay, verify, retention, reports.

They use the worker's modules (the sink, the decoder, the stored offsets); the
worker uses none of them.
"""

"""Forensic audit of drflow runs: timeline export, tamper-evident archive, replay against today's code.

Everything here works from a workflow history alone (fetched from Temporal, read from a file or from an
archive), so the evidence outlives Temporal's retention. See docs/audit.md.
"""

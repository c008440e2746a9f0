"""The parts of ``benchmarks/failover.py``, split by what they hold so that each stays readable.

``records`` (what a run measures), ``history`` (action counting and timing from histories and the dev
server's metrics), ``drflow_run`` (the failover driven through Temporal), ``baseline`` (the same steps as a
plain script) and ``figures`` (the tables printed side by side). Imported only by the entry script, which
puts the repository root on ``sys.path`` first; the scripts are run as files, so this directory is on the
path as the entry script's own.
"""

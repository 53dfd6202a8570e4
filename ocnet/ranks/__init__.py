"""Ranks and their messages: the communicator (the only importer of mpi4py; polite waits,
byte counts, per-rank timelines and the stall watchdog), message tags, replicas of the
layers across data groups, pipeline schedules, the coarse-to-fine sweep, per-sample stores,
the communication filters, and the supervisor that reports how each rank's process ends.

May use: :mod:`ocnet.model`.
"""

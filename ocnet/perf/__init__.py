"""Performance: the solvers' own schedules replayed against communicators with virtual
clocks, calibration of a machine's costs, and the speedup model built from both.

May use every other part (it builds solvers as a run does).
"""

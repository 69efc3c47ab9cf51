"""Measure the real engine for the simulator: the step profile (``profiler``), wall-clock replays (``replay``),
the speed probe (``probe``), core pinning (``pinning``), closed comparisons of plans (``closed``, ``plans``,
``simrun``) and their command lines (``odrive profile``, ``odrive probe``).

The tool layer above both backends: it imports ``sim`` and the real backend; what the simulator needs from a
profile (features, fits, profile tables, grids) lives below ``sim`` in :mod:`odrive.calibration`.
"""

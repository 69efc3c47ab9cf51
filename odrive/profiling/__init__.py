"""Sim-to-real: profile the real engine's step, fit a calibrated latency model, replay workloads for real.

Light to import (no JAX): the profiler (``odrive.profiling.profiler``) and the replay driver
(``odrive.profiling.replay``) load JAX when imported themselves.
"""

from odrive.profiling.features import FEATURE_COLUMNS, EngineGeometry, StepFeatures, step_features
from odrive.profiling.fit import ProfileFit, fit_profile
from odrive.profiling.grid import GridPoint, ProfileGrid, quick_grid
from odrive.profiling.profile import PROFILE_DIR, Profile, find_profile

__all__ = [
    "FEATURE_COLUMNS",
    "PROFILE_DIR",
    "EngineGeometry",
    "GridPoint",
    "Profile",
    "ProfileFit",
    "ProfileGrid",
    "StepFeatures",
    "find_profile",
    "fit_profile",
    "quick_grid",
    "step_features",
]

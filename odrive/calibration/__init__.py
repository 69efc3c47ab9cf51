"""What the simulator needs from a profile of the real engine: step features (the real engine's padded shapes
and kernel trips), profile tables, the profiling grid, and the fits (grid and serving-loop correction).

Pure numpy and pandas, below ``sim``: ``sim.latency.calibrated`` builds on it. Measuring a profile (JAX, the real
engine) is ``odrive.profiling``'s.
"""

from odrive.calibration.features import FEATURE_COLUMNS, EngineGeometry, StepFeatures, step_features
from odrive.calibration.fit import ProfileFit, fit_profile
from odrive.calibration.grid import GridPoint, ProfileGrid, quick_grid
from odrive.calibration.profile import PROFILE_DIR, Profile, find_profile

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

"""Old home of the reconstruction pictures; they live in :mod:`pcmae.visualization` now (re-exported here)."""
from pcmae.visualization import PANEL_INCHES, REQUIRED_KEYS, save_reconstruction_png

__all__ = ["PANEL_INCHES", "REQUIRED_KEYS", "save_reconstruction_png"]

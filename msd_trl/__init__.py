"""msd_trl: Multilingual Self-Distillation (MSD) for cross-lingual safety alignment, as a TRL extension."""

__version__ = "0.1.0"

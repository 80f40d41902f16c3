"""Hydra config groups for vgf. A package only so that the YAML files ship with an installed vgf."""

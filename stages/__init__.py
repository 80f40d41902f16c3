"""Pipeline stages: one module per stage, each a ``Stage`` that the runner in ``vgfcli.stage`` drives."""

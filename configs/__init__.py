"""The shipped experiment configs (``*.yaml``), installed as package data of ``jetkd.configs``.

This folder stays at the top of the repository; ``pyproject.toml`` maps it into the package
(``package-dir``), and :func:`jetkd.config.shipped_config` finds a config in it.
"""

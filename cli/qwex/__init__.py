"""The ``qwex`` command line. Thin: parse, call :mod:`qwexstore`, print."""

__all__: list[str] = []

"""Execution drivers for qwex. Each implements :class:`qwexstore.driver.Driver`."""

from .local import LocalDriver

__all__ = ["LocalDriver"]

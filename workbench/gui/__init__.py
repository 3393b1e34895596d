"""The Qt desktop application on top of workbench.core."""

import sys


def _protect_none_refcount() -> None:
    """Work around PySide6 releases (seen in 6.12.0) whose void methods return None without a new reference.

    On Python < 3.12, where None is not immortal, every such call lowers None's reference count by one and a
    few minutes of painting end in "Fatal Python error: none_dealloc". None is never freed anyway, so giving it
    a huge reference count makes the bug harmless. Python 3.12+ (immortal None) needs nothing.
    """
    if sys.version_info >= (3, 12) or sys.implementation.name != "cpython":
        return
    import ctypes

    ctypes.c_ssize_t.from_address(id(None)).value += 1 << 40


_protect_none_refcount()

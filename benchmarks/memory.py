"""Process memory readings shared by the benchmarks (Linux `/proc/self`; elsewhere they read nothing)."""

from __future__ import annotations


def status_kib(field: str) -> int | None:
    r"""
    A `/proc/self/status` field in KiB (`VmRSS`, `VmHWM`...), or `None` where it cannot be read.

    Examples:
        >>> status_kib("NoSuchField") is None
        True
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fp:
            for line in fp:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    r"""Reset the kernel's peak RSS (`VmHWM`) of this process; `False` where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fp:
            fp.write("5")
    except OSError:
        return False
    return True

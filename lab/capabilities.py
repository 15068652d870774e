"""Which Linux capabilities this process holds (read from /proc, nothing asked of the kernel).

The bottom of the privilege modules: `lab.privileges` explains what is missing, `lab.userns`
decides whether to re-run in namespaces of its own; both read the capabilities here.
"""

from __future__ import annotations

CAP_NET_ADMIN = 12  # linux/capability.h
CAP_NET_RAW = 13


def effective_capabilities() -> int:
    """This process's effective capability set (CapEff) as a bit mask; 0 if unreadable."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def has_capability(cap: int) -> bool:
    """True if this process holds `cap` in its effective set."""
    return bool(effective_capabilities() & (1 << cap))

"""Capability checks: say what is missing and how to get it, before the kernel says EPERM."""

from __future__ import annotations

from lab import userns
from lab.capabilities import CAP_NET_ADMIN, CAP_NET_RAW, has_capability
from lab.errors import PrivilegeError

__all__ = ["CAP_NET_ADMIN", "CAP_NET_RAW", "explain", "has_capability", "missing", "require", "userns_note"]

_NAMES = {CAP_NET_ADMIN: "CAP_NET_ADMIN", CAP_NET_RAW: "CAP_NET_RAW"}
_WHY = {
    CAP_NET_ADMIN: "to create network namespaces and TUN devices",
    CAP_NET_RAW: "to open raw sockets for crafted packets",
}


def missing(*caps: int) -> list[str]:
    """Names of the capabilities among `caps` this process lacks."""
    return [_NAMES[c] for c in caps if not has_capability(c)]


def explain(*caps: int) -> str:
    """One sentence naming what is missing, why it is needed and how to get it ('' if nothing)."""
    lacking = [c for c in caps if not has_capability(c)]
    if not lacking:
        return ""
    parts = [f"{_NAMES[c]} ({_WHY[c]})" for c in lacking]
    # Root, or namespaces of its own (userns_note): named namespaces also need CAP_SYS_ADMIN (bind
    # mounts), and setcap on the venv's python would land on the shared system interpreter.
    return (f"needs {' and '.join(parts)}: run it as root, e.g. `sudo .venv/bin/lab ...` or `sudo make test`."
            f"{userns_note()}")


def userns_note() -> str:
    """' ' + a sentence on the no-root way (user namespaces, lab/userns.py): how, or what prevents it.

    Said after a missing-privileges message, so the user learns which setting stands in the way.
    """
    if userns.inside() or has_capability(CAP_NET_ADMIN):
        return ""
    reason = userns.unavailable_reason()
    if reason is None:
        return (" Or without root, in user namespaces of its own: `lab demo`, `lab run`, `lab link`, "
                "`lab probe` and `make test` do that themselves, anything else runs so through "
                "`python -m lab.userns -- COMMAND`.")
    return f" Without root, user namespaces of its own would do, but they are unavailable here: {reason}."


def require(*caps: int) -> None:
    """Raise `PrivilegeError` with an actionable message if any of `caps` is missing."""
    message = explain(*caps)
    if message:
        raise PrivilegeError(message)

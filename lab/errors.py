"""One error contract for the whole lab.

Anything a user can cause (bad bytes from the network, bad CLI values, bad scenario files, missing
privileges, a forbidden target) raises a `LabError` subclass whose message says what to do.
Anything else escaping is a bug.
"""


class LabError(Exception):
    """Base class of every error the lab reports to a user."""


# --- wire format -------------------------------------------------------------------------------
class RemoteWireError(LabError):
    """Bytes received from the network do not form a valid probe message."""


class BadMagicError(RemoteWireError):
    """The header does not start with the probe magic."""


class BadVersionError(RemoteWireError):
    """The header carries a protocol version this lab does not speak."""


class LengthError(RemoteWireError):
    """The declared payload length is over the configured maximum."""


class TruncatedError(RemoteWireError):
    """The message ends before its header or declared payload does."""


class CrcMismatchError(RemoteWireError):
    """The payload does not match the CRC-32 in the header (the data was corrupted).

    `.probe` holds the message as it arrived, so a measuring client can count the corruption
    against its sequence number instead of raising it to the user.
    """

    def __init__(self, message: str, *, probe: object | None = None) -> None:
        super().__init__(message)
        self.probe = probe


class LocalWireError(LabError):
    """Our own code asked the wire layer for something invalid (e.g. a payload over the maximum)."""


# --- configuration and environment --------------------------------------------------------------
class ConfigError(LabError):
    """A value given on the command line, in a scenario file or to the API is not acceptable.

    `.key` names the offending key when the error is about one (None otherwise): an option's name
    (`loss`, `count`) for the API and the command line, its dotted path (`traffic.count`,
    `expect.udp.rtt_p50_ms`) for a scenario file.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ScenarioError(ConfigError):
    """A scenario file is invalid; the message names the file and the key."""


class PrivilegeError(LabError):
    """The operation needs a capability this process lacks (the message names it and how to get it)."""


class TargetRefusedError(LabError):
    """A probe or flood was aimed at an address outside loopback and the lab's own namespaces."""


class EndpointError(LabError):
    """A server or client could not start or reach its peer (port in use, unreachable host...)."""


# --- helper processes ---------------------------------------------------------------------------
class HelperProcessError(LabError):
    """A helper process (forwarder, relay, sandbox, echo server, namespace call) died before it was
    ready, did not answer in time or died mid-run; the message ends with the tail of its stderr."""

    def __init__(self, message: str, *, stderr_tail: str = "") -> None:
        super().__init__(message)
        self.stderr_tail = stderr_tail

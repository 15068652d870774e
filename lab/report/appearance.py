"""How reports and the terminal show a protocol: its label, whether it retransmits, its style, its colour.

Everything comes from the protocol registry (lab.protocols: `label`, `reliable`, `style`), so no
report branches on a protocol's name. A result file may name a protocol this install does not
know (written elsewhere, or by a plugin since removed): it still gets a label (its name in capitals),
`reliable` None (unknown: no sentence that depends on it is said), a plain style and a colour of
its own after the registered ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Okabe & Ito (2008), "Color Universal Design": distinguishable with every common colour deficiency.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000")
# Paul Tol's "muted" scheme, also colour-blind safe: after Okabe-Ito's, so a dozen protocols (the
# built-ins) each get a colour of their own.
TOL_MUTED = ("#332288", "#88CCEE", "#117733", "#999933", "#882255", "#44AA99")
# A protocol's colour is its place in the registry (TCP first: blue, UDP: vermillion); yellow is left
# out (unreadable on white).
PROTOCOL_PALETTE = tuple(c for c in OKABE_ITO if c != "#F0E442") + TOL_MUTED
# rich styles in the same order (the terminal's nearest to the palette's colours).
STYLE_PALETTE = ("bold blue", "bold red", "bold green", "bold magenta", "bold yellow", "bold cyan", "bold")
UNKNOWN_STYLE = "bold"


@dataclass(frozen=True, slots=True)
class Appearance:
    """How one protocol is shown. `reliable` is None for a protocol this install does not know."""

    name: str
    label: str
    reliable: bool | None
    style: str
    known: bool


def registered() -> dict[str, Any]:
    """The protocol registry (name -> Protocol), in its order."""
    from lab.protocols import registry

    return dict(registry())


def appearance(name: str) -> Appearance:
    """How protocol `name` is shown (a fallback for a name the registry does not know)."""
    protocols = registered()
    protocol = protocols.get(name)
    if protocol is None:
        return Appearance(name=name, label=name.upper(), reliable=None, style=UNKNOWN_STYLE, known=False)
    index = list(protocols).index(name)
    style = getattr(protocol, "style", "") or STYLE_PALETTE[index % len(STYLE_PALETTE)]
    reliable = getattr(protocol, "reliable", None)
    return Appearance(name=name, label=getattr(protocol, "label", "") or name.upper(),
                      reliable=None if reliable is None else bool(reliable), style=style, known=True)


def label(name: str) -> str:
    """How tables, sentences and plots title protocol `name` ("TCP")."""
    return appearance(name).label


def reliable(name: str) -> bool | None:
    """True if protocol `name` retransmits until delivered, False if not, None if unknown here."""
    return appearance(name).reliable


def colour(name: str, protocols: Sequence[str] = ()) -> str:
    """A stable colour per protocol: its index in the registry; a name the registry does not know takes
    the next colours, in the order `protocols` (the result file's) lists the unknown ones."""
    known = list(registered())
    if name in known:
        index = known.index(name)
    else:
        unknown = [p for p in dict.fromkeys(protocols) if p not in known]
        index = len(known) + (unknown.index(name) if name in unknown else len(unknown))
    return PROTOCOL_PALETTE[index % len(PROTOCOL_PALETTE)]

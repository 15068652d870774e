"""wirelab: TCP and UDP side by side on real sockets, over a real impaired link.

Importing `lab` must stay cheap: scapy, matplotlib, scipy and pyroute2 are imported lazily where used.
"""

__version__ = "0.1.0"

"""peerphone: a peer-to-peer voice network with elected, capped and verifiable supernodes."""

__version__ = "0.1.0"

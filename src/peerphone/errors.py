"""The project's exception types: local misuse versus garbage from a peer."""


class PeerphoneError(Exception):
    """Base class of every error peerphone raises on purpose."""


class LocalProtocolError(PeerphoneError):
    """The caller used an API wrongly (a bug on this side, never caused by the network)."""


class DecodeError(PeerphoneError):
    """Bytes from outside could not be decoded into a valid message or record."""


class RecordRejected(PeerphoneError):
    """A decoded record failed the acceptance rule; `reason` says which part."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class MessageTooLarge(LocalProtocolError, ValueError):
    """A core built a message over the wire limit: our own bug (a ValueError too, as the
    encoder's callers have always caught)."""

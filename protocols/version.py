"""The wire protocol version. Bump on any incompatible change to a message type."""

PROTOCOL_VERSION: int = 1

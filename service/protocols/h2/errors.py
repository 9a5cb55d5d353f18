"""Errors of the HTTP/2 pair mapping; a protocol error carries the code to send in
``error_code`` (the GOAWAY's, or the HTTP status a refused stream is answered with)."""

from __future__ import annotations

__all__ = ["PairLimitReached", "PairProtocolError", "PairRequestError", "PairStateError"]


class PairProtocolError(Exception):
    """The peer broke HTTP/2; GOAWAY(``error_code``) is queued in ``data_to_send()``."""

    def __init__(self, message: str, error_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.error_code = error_code


class PairStateError(Exception):
    """Local misuse: the stream is closed or unknown, or no stream can be opened."""


class PairLimitReached(PairStateError):
    """No pair can be opened now: the agent's SETTINGS have not arrived, or its
    MAX_CONCURRENT_STREAMS is reached. Retry once streams close."""


class PairRequestError(Exception):
    """A stream to refuse with HTTP status ``error_code`` and ``message`` as the text
    body."""

    def __init__(self, error_code: int, message: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.message = message

    def __str__(self) -> str:
        return f"{self.error_code}: {self.message}"

"""The client's one failure type, reported as ``error: <STATUS>: <message>``."""


class CliError(Exception):
    """A failure to report as ``error: STATUS: message``."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

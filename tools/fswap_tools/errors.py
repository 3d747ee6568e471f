"""Errors with user-facing messages. The CLI prints ``error: <message>`` without a traceback."""


class ExportError(Exception):
    """A conversion failure (bad input, truncated file, failed check). Exit code 1."""

    exit_code = 1


class RefusedGlobal(ExportError):
    """The pickle asked for a global outside the allow-list. Exit code 2; nothing was executed."""

    exit_code = 2

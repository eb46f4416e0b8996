"""The one exception type users see: a clear, one-line message, no traceback."""


class PgolfError(Exception):
    """A user-facing error (bad input, missing file, corrupt data). The CLI prints it as one line."""

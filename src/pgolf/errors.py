"""The one exception type users see: a clear, one-line message, no traceback; and how text is made printable."""


class PgolfError(Exception):
    """A user-facing error (bad input, missing file, corrupt data). The CLI prints it as one line."""


def printable(text) -> str:
    """`text` with line breaks and other non-printable characters escaped (\\n, \\x1b...): an error stays on
    one line, and a name read from a file cannot move the cursor or clear the terminal."""
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
                   for char in str(text))

"""The one grammar failure type: its message is what the client reads in the 422."""


class GrammarError(Exception):
    """A grammar that does not compile, uses an unsupported feature or exceeds a limit."""

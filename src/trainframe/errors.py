"""Errors that reach the user as one line and exit status 2."""


class UserError(Exception):
    """Bad input from the user: a config, a path, a name. The CLI prints it as one line and exits 2."""

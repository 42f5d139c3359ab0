"""Errors a user can cause. The CLI prints their message alone (no traceback) and exits with 2."""


class UserError(Exception):
    """Base class: bad input that the user can fix; the message names the file, row or key."""


class DataError(UserError):
    """A malformed data file or dataset directory."""


class ConfigError(UserError):
    """A config value that cannot work."""

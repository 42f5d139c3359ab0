"""Errors a user can cause. The CLI prints their message alone (no traceback) and exits with 2."""


class UserError(Exception):
    """Base class: bad input that the user can fix; the message names the file, row or key."""


class DataError(UserError):
    """A malformed data file or dataset directory."""


class ConfigError(UserError):
    """A config value that cannot work."""


def checked_int(value, name: str, minimum: int, expected: str) -> int | None:
    """``value`` of config key ``name`` if it is None or an int >= ``minimum`` (a bool is not an int
    here); otherwise one ConfigError ``"<name>=<value>: expected <expected>"``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ConfigError(f"{name}={value}: expected {expected}")
    return value


def checked_bool(value, name: str) -> bool:
    """``value`` of config key ``name`` if it is a bool; otherwise one ConfigError naming the key."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value}: expected true or false")
    return value

"""Errors a user can fix. The CLI prints their message as one line and exits with code 2."""


class UserError(Exception):
    """Bad input: the message says what was wrong and how to fix it."""


class ConfigError(UserError):
    """An invalid configuration value (depth, batch size, ...)."""


class DataError(UserError):
    """A dataset that is missing, unreadable or incompatible."""

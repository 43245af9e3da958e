"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class SrclusterError(Exception):
    """An error the user can fix; its message says what is wrong, where, and what to do."""


class ConfigError(SrclusterError):
    pass


class StorageError(SrclusterError):
    pass


class StackError(SrclusterError):
    pass

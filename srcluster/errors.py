"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class SrclusterError(Exception):
    """An error the user can fix; its message says what is wrong, where, and what to do."""


class ConfigError(SrclusterError):
    pass


class StorageError(SrclusterError):
    pass


class StackError(SrclusterError):
    pass


class Preempted(SrclusterError):
    """A run stopped on request (Slurm's warning signal, a spot reclaim, a pod eviction) after saving a checkpoint;
    running the same command again resumes it. The CLI exits with `exit_code` (EX_TEMPFAIL: try again)."""

    exit_code = 75

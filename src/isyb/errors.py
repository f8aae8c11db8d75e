"""Exceptions that the command line turns into a one-line message and exit code 2."""


class IsybError(Exception):
    """Bad input or a refused operation: reported as one line, exit code 2."""


class InputError(IsybError, ValueError):
    """An input that cannot be used as given (wrong shape, empty mask, constant values...)."""


class RegistrationError(IsybError):
    """Template-to-subject registration failed its quality check (fail closed)."""


class BrainExtractionError(IsybError):
    """The brain mask looks wrong, so the brain could not be protected (fail closed)."""

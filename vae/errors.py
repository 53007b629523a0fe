"""The exceptions a user can cause. The CLI turns each into one line on stderr and exit code 2."""


class VAEError(Exception):
    """Base for errors caused by input: bad configuration, bad files, bad data."""


class ConfigError(VAEError, ValueError):
    """A configuration value is out of range; the message names the field and what is allowed."""


class DataError(VAEError):
    """A data source is unknown, missing, corrupted or malformed; the message names the file."""


class CheckpointError(VAEError):
    """A checkpoint is missing, unreadable or does not match the requested run."""


class DivergedError(VAEError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""

"""The exceptions a user can meet. The CLI turns each into one line on stderr and its `exit_code`:
2 for bad usage or settings (nothing was started), 1 for a run that started and failed."""

# The characters str.splitlines() breaks a line at, each shown as its escape (\n, \r, \x85...).
LINE_BREAKS = {ord(c): repr(c)[1:-1] for c in "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"}


class VAEError(Exception):
    """Base for errors caused by input: bad configuration, bad files, bad data. Its text is one line whatever
    the input held (a file name or a parameter name with a line break in it), as the CLI's `vae: error:` needs."""

    exit_code = 2

    def __str__(self) -> str:
        return super().__str__().translate(LINE_BREAKS)


class ConfigError(VAEError, ValueError):
    """A configuration value is out of range; the message names the field and what is allowed."""


class DataError(VAEError):
    """A data source is unknown, missing, corrupted or malformed; the message names the file."""


class DownloadError(DataError):
    """Every mirror failed for a file (network, server or checksum): a run that failed, not bad input."""

    exit_code = 1


class CheckpointError(VAEError):
    """A checkpoint is missing, unreadable or does not match the requested run."""


class DivergedError(VAEError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""

    exit_code = 1


class ResumableError(VAEError):
    """A pipeline step's subprocess started and then failed, not on bad input (a tracking server or database
    that stopped answering, a killed child): the step run again resumes its study or checkpoint."""

    exit_code = 1


class LockBusy(VAEError):
    """Another writer held a lock for longer than this one waits (the champion lock of a registered model)."""

    exit_code = 1


class StaleDecision(VAEError):
    """A promotion decision judged against a champion that has moved since (a hand promote or rollback during
    a sign-off): nothing is changed, the version stays undecided and is judged again."""

    exit_code = 1

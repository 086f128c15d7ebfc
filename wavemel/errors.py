"""Exception types that the command line turns into one-line messages."""


class WavemelError(Exception):
    """Base class for errors caused by user input (files, data, options), not by bugs.

    The CLI prints ``wavemel: error: <message>`` for these and exits with status 2, so each
    message must name the file or option involved and say what is wrong with it.
    """


class AudioError(WavemelError):
    """A file could not be decoded as audio (missing, corrupt, not audio, NaN/Inf samples)."""


class DataError(WavemelError):
    """A dataset root, manifest or metadata file is missing or malformed."""


class CheckpointError(WavemelError):
    """A checkpoint or run folder is missing, incomplete or incompatible."""


class WavemelWarning(UserWarning):
    """Something a user should know that did not stop the job (the CLI prints one line)."""


class EmptyClipWarning(WavemelWarning):
    """A clip had no samples and was answered with the model's empty-clip distribution.

    Attributes:
        path: The clip's file (or ``"waveform"`` for an in-memory clip).
    """

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path

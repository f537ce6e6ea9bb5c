"""User-facing errors.

Anything a user can cause (a bad name, a bad file, a bad value) raises a subclass of
:class:`PrunelabError`. The CLI prints its message and exits with status 2, never a traceback.
"""

from __future__ import annotations


class PrunelabError(Exception):
    """An error caused by the user's input; its message says what is wrong and what is accepted."""


class DataError(PrunelabError):
    """A dataset that is missing, truncated or corrupt."""


class MaskError(PrunelabError):
    """A mask that does not fit the model it is applied to."""


class CheckpointError(PrunelabError):
    """A checkpoint or weights file that cannot be read safely."""


class SpecError(PrunelabError):
    """An invalid configuration value or combination."""


class UnknownNameError(SpecError, KeyError):
    """A name (model, dataset, optimizer, ...) that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class TrainingDiverged(PrunelabError):
    """The loss became NaN or infinite: the run stops and nothing of it is stored as finished."""


class OutputError(PrunelabError):
    """A file or folder that cannot be written (read-only, full disk, a path that is a file, ...)."""

"""Errors a user can act on. Each message names the field, file or setting and what to change."""


class WorkbenchError(Exception):
    """Base for every error the workbench reports to a user instead of a traceback."""


class ConfigError(WorkbenchError, ValueError):
    """A config field is missing, has the wrong type or lies outside its allowed range."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class DatasetError(WorkbenchError):
    """A dataset cannot be read or cannot serve the requested episodes."""


class EpisodeError(DatasetError, ValueError):
    """The n-way / k-shot / q-query setting is impossible for this dataset split."""


class ImageLoadError(WorkbenchError):
    """One image file could not be used; the message names the file and the reason."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class CheckpointError(WorkbenchError):
    """A checkpoint is missing, corrupt, unsafe or from another architecture."""


class TrainingDiverged(WorkbenchError):
    """The loss became NaN or infinite; the run keeps its last good checkpoint."""


class RunNotFound(WorkbenchError, KeyError):
    """No run with this id or name is in the run store."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "run not found"

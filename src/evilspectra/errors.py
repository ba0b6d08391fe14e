"""The project's own error types. The CLI turns each into a one-line message and exit status 2."""


class EvilSpectraError(Exception):
    """Base class: a problem the user can fix (bad input, bad config, missing file)."""


class ConfigError(EvilSpectraError):
    """A config field has a value that is not allowed; the message names the field."""


class DataError(EvilSpectraError):
    """A dataset file is malformed; the message names the file and line."""


class AdapterError(EvilSpectraError):
    """A LoRA adapter directory is missing, corrupt or inconsistent."""


class QuestionsError(EvilSpectraError):
    """A question file is malformed; the message names the file and entry."""


class QuestionsWarning(UserWarning):
    """A question file has a field that is read but not used; the message names the file, entry and field."""


class JudgeError(EvilSpectraError):
    """The judge could not be configured (unknown judge, missing API key...)."""

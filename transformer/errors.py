"""The one base class of errors caused by what a user gave (a config, a corpus, a checkpoint, text).

Scripts print such an error's message and exit 2; any other exception is a bug and keeps its
traceback. Each stage raises its own subclass: ConfigError, DataError, CheckpointError,
TrainingError, InputError.
"""


class UserError(Exception):
    """Bad input; the message names the problem and the fix."""


class InputError(UserError):
    """Files or text given to translate, score or distill that cannot be used as they are."""

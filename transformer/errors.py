"""The one base class of errors caused by what a user gave (a config, a corpus, a checkpoint, text).

Scripts print such an error's message and exit 2; any other exception is a bug and keeps its
traceback. Each stage raises its own subclass: ConfigError, DataError, CheckpointError,
TrainingError, InputError.
"""
import errno


class UserError(Exception):
    """Bad input; the message names the problem and the fix."""


class InputError(UserError):
    """Files or text given to translate, score or distill that cannot be used as they are."""


class PeerFailed(Exception):
    """Another rank of a distributed run failed and reports it. On its machine the other ranks end
    quietly with status 0 (`here`): torchrun stops every rank there when one fails, and would stop
    that rank before it reported. Ranks on other machines end with one line and status 2."""

    def __init__(self, rank: int, host: str, here: bool):
        super().__init__(f"rank {rank} failed on {host}")
        self.rank, self.host, self.here = rank, host, here


def disk_full(error: BaseException | None) -> bool:
    """A write failed for want of space (a full disk or quota): the user can free some and go on."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)

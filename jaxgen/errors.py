"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


class CheckpointError(UserError):
    """A checkpoint or model directory is missing, incomplete or inconsistent."""


class PromptTooLongError(UserError):
    """A prompt does not fit in the model's context."""

"""The one exception type for mistakes a user can fix (bad config, bad path, bad data)."""


class UserError(Exception):
    """An error caused by input the user controls.

    The CLI prints its message on one line and exits with code 2, without a traceback.
    """

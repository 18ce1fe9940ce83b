"""The one exception type the command-line tools turn into a one-line error."""


class DDPMError(Exception):
    """A problem with the user's input or environment, stated in one line."""

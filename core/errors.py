"""The one exception type the command-line tools turn into a one-line error."""


class DDPMError(Exception):
    """A problem with the user's input or environment, stated in one line."""


def summary(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters; its type's name when the
    message is empty. Foreign libraries' errors are quoted this way inside a one-line DDPMError."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__

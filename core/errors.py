"""The one exception type the command-line tools turn into a one-line error."""


class DDPMError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class SettingError(DDPMError):
    """A sampling setting that cannot work with this model. ``setting`` names the parameter; ``needs``
    is the (setting, value) that would make it work, for a front end to spell in its own terms."""

    def __init__(self, setting: str, problem: str, needs: tuple[str, str | None] | None = None) -> None:
        self.setting, self.problem, self.needs = setting, problem, needs
        remedy = "" if needs is None else f"; set {needs[0]}" + ("" if needs[1] is None else f"={needs[1]!r}")
        super().__init__(f"{setting}: {problem}{remedy}")


def summary(exc: BaseException, limit: int = 200) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters; its type's name when the
    message is empty. Foreign libraries' errors are quoted this way inside a one-line DDPMError."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__

"""User-facing errors. The CLI prints them without a traceback and exits with status 2."""


class SprintcError(Exception):
    """Bad input from the user: a spec, a checkpoint, a data folder, a flag."""


class SpecError(SprintcError):
    """A spec that does not load or does not validate. The message names file:line:col and the key."""


class PassError(SprintcError):
    """A pass cannot apply to this graph (impossible order, block out of range, unrealisable ratio)."""


class CheckpointError(SprintcError):
    """A checkpoint that is missing, corrupt or does not match the model."""


class DataError(SprintcError):
    """A data folder or file that is missing, empty, corrupt or does not match the spec."""


def first_line(e: BaseException | str, limit: int = 300) -> str:
    """The first non-blank line of an exception's message or of a text (none at all: ""), clipped to `limit`
    characters, for one-line error reports."""
    line = next((s.strip() for s in str(e).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."

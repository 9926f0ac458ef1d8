"""User-facing errors: the CLI prints them as one line and exits non-zero, without a traceback."""


class UserError(ValueError):
    """Bad input from the user: a file, a config key or an argument. The message names where and what.

    A ValueError, so that a library caller's `except ValueError` catches bad input whichever function refused it
    (the numerical functions raise plain ValueError); the CLI prints a UserError as one line, exit status 2."""


class FolderInUse(UserError):
    """A folder that another live process holds for writing (io_utils.run_lock): a caller with other work to do
    (several `reproduce` processes sharing one output folder) can put this work off and come back to it."""


def located(path, line: int | None, problem: str) -> UserError:
    """A UserError that names the file (and line, when known) and the problem, as `file:line: problem`."""
    where = f"{path}:{line}" if line is not None else f"{path}"
    return UserError(f"{where}: {problem}")


def counted(n: int, noun: str) -> str:
    """"1 member", "2 members": a count and its noun (a regular plural) for messages."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"

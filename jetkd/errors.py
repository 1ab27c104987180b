"""The one error type for bad user input (files, branches, momenta, config keys).

The CLI turns an :class:`InputError` into a single line on stderr and a non-zero exit;
everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input, reported as ``WHERE: WHAT`` on one line.

    where: the file (optionally with its entry range) or config key that is wrong.
    what:  what was wrong and what was expected.
    """

    def __init__(self, where: str, what: str, *, entries: tuple[int, int] | None = None):
        self.where = f"{where}[entries {entries[0]}-{entries[1]}]" if entries else str(where)
        self.what = what
        super().__init__(f"{self.where}: {what}")

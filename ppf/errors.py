"""The one exception type users see.

Every mistake a user can make (a bad path, a bad ratio, an unknown key in params.yaml) raises
:class:`PPFError` with a message that names the offending value and says how to fix it. The CLI
prints that one line and exits non-zero; nothing else is shown.
"""


class PPFError(Exception):
    """A user-facing error: one line, naming the value and the fix."""

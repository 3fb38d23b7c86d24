"""The one exception type that reaches users as a single line.

Anything raised as :class:`UserError` is bad input or a bad environment that the user can fix; the CLI prints its
message on one line and exits with code 2. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix. The message names the problem and the fix."""

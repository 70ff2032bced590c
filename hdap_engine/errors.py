"""The one exception type users see.

Anything a user can get wrong (a file, a flag, a budget, a weights file)
raises `HdapError` with a single-line message that says what is wrong and
what to do. The CLI prints it as ``error: <message>`` and exits 2; the app
shows it in ``st.error``. Any other exception is a bug.
"""


class HdapError(Exception):
    """A user-facing error: one line, naming the culprit and the fix."""

    def __init__(self, message: str):
        # Collapse to one line: messages are shown in a terminal and a banner.
        super().__init__(" ".join(str(message).split()))

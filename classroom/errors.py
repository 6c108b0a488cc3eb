"""The classroom app's errors: one base, a user's mistake told apart from a refusal."""


class ClassroomError(Exception):
    """Base for everything the classroom services refuse; `code` is stable for clients."""

    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotAllowed(ClassroomError):
    code = "forbidden"


class NotFound(ClassroomError):
    code = "not_found"


class InvalidState(ClassroomError):
    code = "invalid_state"

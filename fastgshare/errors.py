"""Errors of the shared vocabulary. Messages name the field and what is allowed."""


class FastGShareError(Exception):
    """Base of every error this project raises on purpose."""


class ValidationError(FastGShareError, ValueError):
    """Input outside its allowed range; ``field`` names it, ``allowed`` says what would pass."""

    def __init__(self, field: str, allowed: str, got: object = None) -> None:
        self.field = field
        self.allowed = allowed
        self.got = got
        shown = "" if got is None else f" (got {got!r})"
        super().__init__(f"invalid {field}{shown}: allowed {allowed}")

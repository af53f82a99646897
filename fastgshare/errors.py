"""Errors of the shared vocabulary. Messages name the field and what is allowed."""


class FastGShareError(Exception):
    """Base of every error this project raises on purpose."""


class ValidationError(FastGShareError, ValueError):
    """Input outside its allowed range; ``field`` names it, ``allowed`` says what would pass."""

    def __init__(self, field: str, allowed: str, got: object = None) -> None:
        self.field = field
        self.allowed = allowed
        self.got = got
        shown = "" if got is None else f" (got {_shorten(repr(got))})"
        super().__init__(f"invalid {field}{shown}: allowed {allowed}")


def _shorten(text: str, max_chars: int = 80) -> str:
    """A value as shown in a message: a 400-digit value must not make a 400-digit answer."""
    return text if len(text) <= max_chars else f"{text[:max_chars - 20]}...({len(text)} chars)"

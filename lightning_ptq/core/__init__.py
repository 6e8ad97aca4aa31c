"""What every other package of lightning_ptq builds on, and which imports none of them: the
errors a user can cause."""
from .errors import UserError

__all__ = ["UserError"]

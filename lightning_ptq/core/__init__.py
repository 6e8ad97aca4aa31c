"""What every other package of lightning_ptq builds on, and which imports none of them: the
errors a user can cause, the task protocol, and the Lightning runs the library makes."""
from .errors import ConfigError, UserError

__all__ = ["ConfigError", "UserError"]

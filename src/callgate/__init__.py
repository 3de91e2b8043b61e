"""callgate: a privileged-access gateway for function calls."""

__version__ = "0.1.0"

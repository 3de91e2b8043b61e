"""The ``callgate`` console script."""

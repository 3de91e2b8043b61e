"""The one C extension (the masking DataRow loop); everything else is in pyproject.toml.

``optional``: without a C compiler callgate installs and runs the same loop in Python (several
times slower); ``callgate serve`` then logs a warning when a policy masks, and the masking
benchmarks say which loop ran.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "callgate.masking._rowscan",
            ["src/callgate/masking/_rowscan.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
        )
    ]
)

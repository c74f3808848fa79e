"""Build hook for the compiled NNLS loops (metadata lives in pyproject.toml).

The extension is optional: without a C compiler the install still succeeds and
``scalenmf.kernels.nnls`` runs its numpy code instead (same results to round-off).
"""

import os

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "scalenmf.kernels._nnls",
            ["scalenmf/kernels/_nnls.c"],
            extra_compile_args=["/O2"] if os.name == "nt" else ["-O3"],
            optional=True,
        )
    ]
)

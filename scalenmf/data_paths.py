"""Where the project's shared public data sets live (for the evaluation and the tests).

The DNMF evaluation reads the 12 synthetic signature sets and the 560 breast genomes from
a ``shared/data`` folder that sits beside the repository in the development layout. A
checkout may also sit deeper (a git worktree, a CI clone in a sub-folder), so every
ancestor of the package is tried; ``SCALENMF_SHARED_DATA`` overrides the search.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable naming the shared data folder explicitly.
ENV_VAR = "SCALENMF_SHARED_DATA"


def shared_data_dir() -> Path:
    """The ``shared/data`` folder: ``$SCALENMF_SHARED_DATA``, else the nearest ancestor
    of this package (or of the working directory) that has one.

    Returns the conventional ``../shared/data`` beside the repository when none exists,
    so error messages name the place that was expected.
    """
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return Path(explicit)
    here = Path(__file__).resolve()
    for start in (here.parent, Path.cwd().resolve()):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return here.parents[2] / "shared" / "data"

"""The iteration driver and the executors that run its block map and tree reduce.

``make_executor`` (from ``engine/executor.py``) picks the local thread executor or the Dask
one; ``engine/base.py`` is the contract both meet. Dask is imported only when a Dask
executor is made.
"""

from scalenmf.engine.base import Executor
from scalenmf.engine.executor import make_executor
from scalenmf.engine.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "make_executor"]

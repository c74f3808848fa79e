"""The iteration driver and the executors that run its block map and tree reduce."""

from scalenmf.engine.executor import Executor, make_executor
from scalenmf.engine.local import LocalExecutor

__all__ = ["Executor", "LocalExecutor", "make_executor"]

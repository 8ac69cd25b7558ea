"""aitp, the AI Task Processor: the domain layer (no actors in here).

The pipeline that drives these pieces lives in the sibling package `actors`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]

"""Vector work: the jobs sent to worker processes, their checks and encoding, the pool and the worker.

Empty on purpose: importing `aitp.vectors.jobs` or `aitp.vectors.pool` must not import numpy into
the service process (only `checks`, loaded by the workers, does).
"""

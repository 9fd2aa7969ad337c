"""Numbered proof-of-concept stages, each runnable as ``python -m poc.<stage>``.

Each verifies one step against the real kernel (Windows, or Wine), prints what it saw and ends
with a ``PASS`` or ``FAIL`` line; the exit status is 0 only on ``PASS``. Every wait has a timeout.
"""

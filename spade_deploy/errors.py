"""The one split every command makes between errors: bad input (a `ValueError`, exit status 2) and work that ran and
failed (a `Failure`, exit status 1). Torch-free, imported by every stage."""
from __future__ import annotations


class Failure(RuntimeError):
    """The input was fine but the work failed: a parity check, a server, a remote model, a missing capability."""

"""Moved to :mod:`agents.pool` (``BACKENDS``, ``check_backend``, and ``WorkerPool`` in place of
``ProcessActor``). Only ``agents/world_models.py`` still imports ``check_backend`` from here: delete
this file once it imports from :mod:`agents.pool`."""

from agents.pool import BACKENDS, check_backend

__all__ = ["BACKENDS", "check_backend"]

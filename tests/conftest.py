"""Test-wide settings."""

import os

# As the jetkd CLI does: OpenMP threads that spin-wait for a busy core make small torch ops ~30x slower on a
# 2-core machine shared with subprocesses (DDP, the generator's workers). Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

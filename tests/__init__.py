"""The test suite. A package, so tests share helpers by module name (`tests.official`, `tests.fixtures.serving`)."""
import os

# The suite shares 2 cores with a Triton server and subprocesses. OpenMP workers that spin while they wait make such a
# contended run several times slower (tests/spade_deploy: 177 s spinning, 48 s passive). This runs before anything
# imports torch, and subprocesses inherit it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

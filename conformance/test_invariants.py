"""What the definition of a per-sample gradient implies, for every method: the tests of
`persample.conformance.suite.test_invariants`, collected here (they live in the package, so that an
installed persample runs them too)."""
from persample.conformance.suite.test_invariants import *  # noqa: F401,F403

"""Each per-layer rule over random shapes, for the methods that compute with them: the tests of
`persample.conformance.suite.test_layer_rules`, collected here (they live in the package, so that an
installed persample runs them too)."""
from persample.conformance.suite.test_layer_rules import *  # noqa: F401,F403

"""Every method × workload × mode against the float64 reference, judged by the gate: the tests of
`persample.conformance.suite.test_matrix`, collected here (they live in the package, so that an
installed persample runs them too)."""
from persample.conformance.suite.test_matrix import *  # noqa: F401,F403

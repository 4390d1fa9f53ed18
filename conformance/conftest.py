"""This repository's entry to the conformance suite, whose tests, options, fixtures and gate live in
the package (`persample.conformance.suite`, `persample.conformance.plugin`); here the options also
have their short spellings. Results go to reports/conformance/<machine>.json.

    pytest conformance                                   # every registered method, the CI modes
    pytest conformance --mode all                        # every mode this device offers
    pytest conformance --method vmap --workload mlp      # a slice
    pytest conformance --method mylib.plugin:method      # your own method, without forking
    pytest conformance --deviations my_deviations.toml   # your own known deviations, besides ours

(Do not add `-p persample.conformance.plugin` here: this conftest already is that plugin.)
"""
import pytest

from persample.conformance.options import add_options
from persample.conformance.plugin import *  # noqa: F401,F403  the suite's hooks and fixtures


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser, short_names=True)  # --method as well as --persample-method

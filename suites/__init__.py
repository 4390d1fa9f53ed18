"""asv benchmark suites of persample; the cases and their logic live in `persample.bench`."""

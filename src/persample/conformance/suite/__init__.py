"""The conformance suite's test modules, installed with persample so that it runs anywhere:

    pytest -p persample.conformance.plugin --pyargs persample.conformance.suite --persample-method NAME
    persample conformance --method NAME                 # the same, every mode this device offers

`test_matrix`: every method × workload × mode against the float64 reference, judged by the gate;
`test_invariants`: what the definition of a per-sample gradient implies, for every method;
`test_layer_rules`: each per-layer rule over random shapes, for the methods that compute with them.
The options, fixtures and the strict gate come from `persample.conformance.plugin`.
"""

"""The three-stage recipe: derivation rules and chaining (`pipeline`), the end-of-pipeline report (`report`), and
the demo (`demo`, with the embedded `demo.yml`)."""

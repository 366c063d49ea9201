"""Real example data used by the example DAGs, tests and benchmarks."""

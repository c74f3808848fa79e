"""Benchmark harness for scalenmf against its peers (scikit-learn, RcppML, R NMF, nimfa).

Run from the repository root: ``python -m benchmarks.bench_core --help``.
See docs/benchmarks.md.
"""

"""Benchmarks for xjobs, run by `make bench` (python -m bench [name ...]).

Each benchmark compares the project against a baseline measured in the same run (absolute times on a
shared machine are noisy; ratios are not), writes bench/results/<name>.json and contributes rows to
bench/results/SUMMARY.md.
"""

"""Benchmarks: each measures sparsa against its peers in one process and writes bench/results/."""

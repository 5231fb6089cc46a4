"""Benchmark harness for the RAGline gateway.

Run with ``python -m bench`` (see ``bench/README.md``). The harness starts its
own Redis, the servers under test (the gateway and two references: a naive
per-subscriber server and a transport-only ceiling), a publisher process and
load-generating client processes, and reports each server's numbers and their
ratios. Nothing here is imported by the gateway.
"""

"""Benchmarks of budget_ws; run them with ``scripts/bench`` (see ``benchmarks/README.md``)."""

"""Benchmark scenarios: each module exposes ``NAME``, ``TITLE`` and ``async def run(ctx) -> ScenarioResult``
(see ``bench/harness.py``); ``python -m bench`` discovers every module here."""

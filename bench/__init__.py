"""Benchmarks for outbox_admin: publish cost, dispatch throughput, wake latency, memory.

Each benchmark is a module with a ``main(argv)`` that prints a table, optionally
writes JSON (``--json PATH``) and returns the results as a dict:

    python -m bench.publish  --db both
    python -m bench.dispatch --db postgres --events 100000
    python -m bench.latency  --db both
    python -m bench.memory   --db sqlite
    python -m bench.peers                  # against pgqueuer: pip install -e '.[bench]'

``--smoke`` runs tiny sizes in seconds (the test suite does, so the benchmarks
never rot). ``python -m bench.seed`` fills a database with realistic events.
"""

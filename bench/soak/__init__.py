"""Endurance under faults: ``python -m bench.soak`` (``make soak``) runs the hub as operators
deploy it, on simulated hosts, under 10,000+ churning connections, while a schedule breaks
workers, hosts, Redis, links and the database; it checks the invariants all along and at the
end, and writes a report (JSON, Markdown, PNG timeline).

It lives under ``bench/`` because it is the bench's kind of tool (runs the real processes, reuses
:mod:`bench.servers` and its ``/proc`` helpers) and so stays under the same lint; it is not a
test itself (``tests/test_soak.py`` runs its short version).

Modules: :mod:`bench.soak.hosts` (namespaces, veth links), :mod:`bench.soak.proxy` (the link
proxy where partitions, latency and outages happen), :mod:`bench.soak.redis_group` (Sentinel),
:mod:`bench.soak.hubs` (hub hosts), :mod:`bench.soak.clients` (client processes on
:mod:`hubclient`), :mod:`bench.soak.faults` (the schedule), :mod:`bench.soak.invariants` (the
checks), :mod:`bench.soak.report`, :mod:`bench.soak.run` (the orchestrator).
"""

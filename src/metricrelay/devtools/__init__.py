"""Rigs for demos, tests and benchmarks: embedded Redis and Redis Cluster, the demo stack, a fault
proxy. Never imported by the relay, the producer or the reference server."""

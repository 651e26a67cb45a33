"""Helpers shared by the tests and, for two of them, the benchmarks (bench/harness.py puts
the repository on sys.path):

- `partner`: the fake partner, a real HTTP server on loopback (in process, or its own
  process for bench/);
- `processes`: children in their own process groups (start with a log file, wait until
  ready, stop or kill the group), the portal's command lines, what /proc says about them.

Those two use the standard library only. Nothing is imported here, so that
`python -m tests.support.partner` loads no other module.
"""

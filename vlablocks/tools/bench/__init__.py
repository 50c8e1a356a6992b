"""`vlablocks bench`: every speed ratio that matters, both sides measured in one run (see docs/benchmarks.md).

One module per row (training, data, inference, flow, server, memory); `result` holds the row type and
report writers, `settings` the profiles, `suite` runs them all.
"""

"""Tools: experiment tooling over the core and the methods (bench, sweeps and cluster submission, probes, the toy
task's data and environments). Tools import the core and the methods, never the CLI. Their registered components
(the toy envs) reach the core's registries through the `vlablocks.plugins` entry point `vlablocks.tools.plugin`.
"""

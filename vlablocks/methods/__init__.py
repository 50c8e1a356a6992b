"""Methods: research lines built on the core (RL, value functions, steering, language robustness, co-training).

A method imports the core and never the tools or the CLI. Its registered components (value models, datasets) reach
the core's registries through the `vlablocks.plugins` entry point `vlablocks.methods.plugin`, so the core never
imports a method.
"""

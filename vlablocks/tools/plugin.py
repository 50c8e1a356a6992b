"""The tools' registered components, imported by the core's registries as the `vlablocks.plugins` entry point
`tools` (setup.py): importing each module runs its `@REGISTRY.register` decorators."""

from vlablocks.tools.toy import toy  # noqa: F401  eval env "toy"

"""The methods' registered components, imported by the core's registries as the `vlablocks.plugins` entry point
`methods` (setup.py): importing each module runs its `@REGISTRY.register` decorators."""

from vlablocks.methods.cotraining import vqa_dataset  # noqa: F401  dataset "vqa"
from vlablocks.methods.rl import config  # noqa: F401  config section "rl"
from vlablocks.methods.spatial import world_losses  # noqa: F401  auxiliary losses "alg1_geo", "alg1_dyn", "alg1_reg"
from vlablocks.methods.value import qwen_value, value_guided, value_model  # noqa: F401  value models, "value_guided"

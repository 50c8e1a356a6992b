"""vlablocks: swappable building blocks for vision-language-action robot policies."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "torch>=2.7,<2.12",
    "transformers>=5.2,<6",
    "accelerate>=1.10,<2",
    "deepspeed>=0.17,<0.20",
    "omegaconf>=2.3,<2.5",
    "diffusers>=0.34,<0.50",
    "lerobot[dataset]>=0.6,<0.7",
    "qwen-vl-utils>=0.0.11,<0.1",
    "peft>=0.17,<0.30",
    "scipy>=1.11",
    "safetensors>=0.5",
    "tokenizers>=0.21",
    "websockets>=13",
    "msgpack>=1.0",
    "tqdm>=4.66",
    "tensorboard>=2.16",
    "matplotlib>=3.8",
    "numpy>=1.26",
    "pillow>=10",
    "pyyaml>=6",
]

EXTRAS_REQUIRE = {
    "gpu": ["flash-attn>=2.7"],
    # metaworld 3.1.1 pins mujoco 3.3.0, which holds dm-control (gym-aloha) at 1.0.28: both run gym-aloha alike.
    "sim": ["gym-aloha>=0.1", "gym-pusht>=0.1", "metaworld==3.1.1"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "black>=24", "ruff>=0.6"],
}

setup(
    name="vlablocks",
    version="0.1.0",
    description="Build, train and serve vision-language-action robot policies from swappable pieces.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=find_packages(include=["vlablocks", "vlablocks.*", "deployment", "deployment.*"]),
    include_package_data=True,
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": ["vlablocks=vlablocks.cli.main:main"],
        # The methods' and tools' components reach the core's registries as plugins: the core imports neither.
        "vlablocks.plugins": ["methods = vlablocks.methods.plugin", "tools = vlablocks.tools.plugin"],
    },
)

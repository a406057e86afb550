from setuptools import find_packages, setup

setup(
    name="hope-hf",
    version="0.1.0",
    description="Hope (Nested Learning, Behrouz et al. 2025) for the Hugging Face ecosystem",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=find_packages(include=["hope_hf", "hope_hf.*"]),
    package_data={"hope_hf": ["data/*.txt"], "hope_hf.evaluation.tasks": ["*.yaml", "data/*.jsonl"]},
    python_requires=">=3.10",
    install_requires=[
        # A range that an installed torch already satisfies, so pip never replaces it.
        "torch>=2.4",
        "transformers>=5.23.0,<6",
        "accelerate>=1.10",
        "datasets>=3.3",
        "safetensors>=0.4",
        "flash-linear-attention>=0.6",
        "triton>=3.3; platform_system == 'Linux'",
        "tqdm",
    ],
    entry_points={
        "console_scripts": ["hope-lm-eval = hope_hf.evaluation.lm_eval_entry:main"],
    },
    extras_require={
        "eval": ["lm-eval>=0.4.13", "matplotlib"],
        "peft": ["peft>=0.18"],
        "dev": ["pytest>=8", "hypothesis>=6.100", "gguf>=0.10", "matplotlib", "scikit-learn", "parameterized", "peft>=0.18"],
    },
)

from setuptools import find_packages, setup

setup(
    name="ocnet",
    version="0.1.0",
    description="Layer-parallel training of residual networks as optimal control",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.10",
    packages=find_packages(include=["ocnet", "ocnet.*"]),
    # Lower bounds only: the Makefile pins the CPU build of torch for this machine,
    # users elsewhere bring the torch build that fits their hardware.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "matplotlib>=3.7",
        "scikit-learn>=1.3",
        "mnist1d>=0.0.2",
        "tqdm>=4.60",
        "mpi4py>=3.1",
        "tomli>=2.0; python_version<'3.11'",
    ],
    extras_require={"test": ["pytest>=7", "ruff>=0.6", "mypy>=1.10", "hypothesis>=6.100", "sphinx>=7", "furo>=2024.1",
                             "import-linter>=2.1", "pytest-xdist>=3.5"],
                    "docs": ["sphinx>=7", "furo>=2024.1", "grimp>=3.5"],
                    # the exact convex solver of ocnet.convex (CVXPY's bare package and one conic solver)
                    "convex": ["cvxpy-base>=1.4", "clarabel>=0.7"]},
)

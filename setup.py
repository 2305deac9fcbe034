from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="txmasse",
    version="0.1.0",
    description="Reach Twisted peers by name, not by address",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.11",
    # Packages at the top of the checkout, declared as such (package_dir): a
    # plain "pip install -e ." then puts the checkout on sys.path, so that
    # Twisted's plugin scan finds twisted/plugins (an import-hook finder would hide it).
    package_dir={"": "."},
    packages=find_packages(include=["txmasse", "txmasse.*"]) + ["twisted.plugins"],
    package_data={"txmasse": ["py.typed"], "txmasse.web": ["static/*"]},
    install_requires=[
        "twisted[tls]>=24.7",
        "txredisapi>=1.4.10",
        "zope.interface>=6",
        "attrs>=23.1",
        "shtab>=1.7",
        "prometheus_client>=0.20",
        "treq>=23.11",
    ],
    entry_points={
        "console_scripts": ["masse = txmasse.cli:main"],
        # Built in, and a plugin like any other (txmasse/registry/plugins.py).
        "txmasse.registries": [
            "etcd = txmasse.registry.etcd:ETCD",
            "etcds = txmasse.registry.etcd:ETCDS",
        ],
    },
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-twisted>=1.14",
            "pytest-xdist>=3.5",
            "hypothesis>=6",
            "cryptography>=42",
            "mypy>=1.10",
            "mypy-zope>=1.0.5",
            "ruff>=0.5",
            "pydoctor>=25.10",
        ],
        "bench": ["pyro5>=5.15", "matplotlib>=3.8"],
        "hiredis": ["hiredis>=3"],  # txredisapi parses replies in C: see docs/costs.md
    },
    classifiers=[
        "Framework :: Twisted",
        "License :: OSI Approved :: MIT License",
        "Programming Language :: Python :: 3",
        "Typing :: Typed",
    ],
)

"""Shim so that `pip install -e .` works with older setuptools."""

import setuptools

setuptools.setup()

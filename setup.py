"""Declares the Cython extensions only; metadata lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension("ovfstream._grains", ["src/_native/grains.pyx"], extra_compile_args=["-O3"]),
]

setup(ext_modules=cythonize(extensions, language_level=3,
                            compiler_directives={"boundscheck": False, "wraparound": False}))

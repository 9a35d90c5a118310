"""Declares the Cython extension only; metadata lives in pyproject.toml.

The .pyx is cythonized when the extension is built, not when this file is imported: making
the sdist needs neither Cython nor a compiler, and the sdist carries grains.pyx, never the
generated grains.c (MANIFEST.in), so every build cythonizes it with a Cython that
pyproject.toml's build requirements name.

OVFSTREAM_PURE_PYTHON=1 leaves the extension out: a py3-none-any wheel for a platform with
no compiler, whose VMDK writer runs the pure-Python twin (ovfstream.grains_py).  Measured about
as fast (ISA-L compresses either way), but without the native encoder ISA-L's bytes are not
reproducible; --engine zlib's are (README "Install").
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

PURE = os.environ.get("OVFSTREAM_PURE_PYTHON", "") not in ("", "0")

_HELP = """
ovfstream: the native core (src/_native/grains.pyx -> ovfstream._grains) did not compile:
  {error}
It needs a C compiler and the Python headers (Debian/Ubuntu: apt-get install gcc python3-dev).
Or install the pure-Python build: about as fast, but the default ISA-L engine's output is then
not byte-reproducible (--engine zlib's is):
  OVFSTREAM_PURE_PYTHON=1 pip install ovfstream-<version>.tar.gz
"""


class BuildExt(build_ext):
    """Cythonizes at build time and turns a compiler failure into a message that says what
    to install, or how to get the pure-Python build instead."""

    def build_extension(self, ext: Extension) -> None:
        # Imported here: Cython is a build requirement, not something setup.py needs to be
        # read (sdist, egg_info, metadata), and the sdist must list the .pyx, not the .c.
        from Cython.Build import cythonize
        (cythonized,) = cythonize([ext], language_level=3, quiet=True, force=self.force,
                                  compiler_directives={"boundscheck": False,
                                                       "wraparound": False})
        ext.sources = cythonized.sources
        try:
            super().build_extension(ext)
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as exc:
            raise SystemExit(_HELP.format(error=exc)) from exc


extensions = [] if PURE else [
    Extension("ovfstream._grains", ["src/_native/grains.pyx"], extra_compile_args=["-O3"]),
]

setup(ext_modules=extensions, cmdclass={"build_ext": BuildExt})

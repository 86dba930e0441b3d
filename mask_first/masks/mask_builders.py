"""The seed API's ``masks.mask_builders`` import path; the code lives in :mod:`mask_first.assembly.mask_builders`."""

from mask_first.assembly.mask_builders import *  # noqa: F401,F403
from mask_first.assembly.mask_builders import __all__  # noqa: F401

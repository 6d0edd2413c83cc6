"""ctdip: Deep Image Prior reconstructions for computed tomography."""

__version__ = "0.1.0"

from ctdip.errors import CtdipError, UserError  # noqa: E402,F401

"""Scan folders (readers/writers), preprocessing, phantoms and noise.

``Scan`` is what every reader returns and what ``Problem`` is built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Scan:
    """Line-integral projections with their geometry.

    projections: float32 (angles, rows, cols), post-log line integrals.
    geometry: ``ctdip.core.geometry.ProjectionGeometry``; volume: ``ctdip.core.geometry.VolumeGeometry``.
    reference: optional float32 (z, y, x) ground truth on the volume grid.
    """

    projections: np.ndarray
    geometry: Any
    volume: Any
    reference: np.ndarray | None = None
    source: Path | None = None
    layout: str = "ctdip"
    info: dict = field(default_factory=dict)

"""Scan folders (readers/writers), preprocessing, phantoms and noise.

``Scan`` is what every reader returns and what ``Problem`` is built from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry


@dataclass
class Scan:
    """Line-integral projections with their geometry.

    projections: float32 (angles, rows, cols), post-log line integrals.
    geometry: every view and detector pixel of the projections; volume: the reconstruction grid.
    reference: optional float32 (z, y, x) ground truth on the volume grid.
    """

    projections: np.ndarray
    geometry: ProjectionGeometry
    volume: VolumeGeometry
    reference: np.ndarray | None = None
    source: Path | None = None
    layout: str = "ctdip"
    info: dict = field(default_factory=dict)

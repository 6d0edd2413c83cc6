"""What a scan-folder layout is, and the registry the loader detects layouts from.

A layout recognises its folders by their content (:meth:`Layout.detect`) and opens one as a
:class:`ScanSource`: the full acquisition geometry and volume grid at once, projections and the
reference read on demand (so ``--angles K`` or a 2D slice reads only what it needs). The loader
(``ctdip.core.data.loader``) applies the scan options to any source the same way.

Each layout module registers itself (``register_layout(MyLayout())`` at its end); the built-in
ones, ``ctdip`` then ``walnut``, are imported on the first registry query and listed first, in
that order, which is the detection order: the first layout whose ``detect`` says yes opens the
folder (``ctdip.core.registry``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from ctdip.core.registry import Registry
from ctdip.errors import UserError

if TYPE_CHECKING:
    from ctdip.core.geometry import ProjectionGeometry, VolumeGeometry

__all__ = ["REGISTRY", "Layout", "ScanSource", "find_layout", "get_layout", "layout_names", "layouts",
           "register_layout", "unregister_layout"]


@runtime_checkable
class ScanSource(Protocol):
    """An opened scan folder (what :meth:`Layout.open` returns and ``load_scan`` reads from)."""

    #: the layout's name, recorded as ``Scan.layout``
    layout: str
    #: every view and the whole detector of the scan
    geometry: ProjectionGeometry
    #: the scan's full reconstruction grid (the reference's grid when there is one)
    volume: VolumeGeometry
    #: the file the geometry came from (named in geometry warnings and errors)
    geometry_path: Path
    #: facts recorded in ``Scan.info`` (e.g. ``raw_counts``, the walnut ``orbit``)
    info: dict
    #: plausibility warnings found while reading (one line each, no ``warning:`` prefix)
    warnings: list[str]

    def read(self, views: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """Line integrals float32 (len(views), len(rows) or all rows, cols) of those views."""
        ...

    def read_reference(self, z: int | None = None) -> np.ndarray | None:
        """The reference (z, y, x) on ``volume``, or its slice z as (1, y, x); None without one."""
        ...


@runtime_checkable
class Layout(Protocol):
    """A scan-folder layout: how to recognise its folders and open one."""

    #: the layout's name (``Scan.layout``, ``ctdip simulate --layout``)
    name: str
    #: the files that identify it, for the "unknown scan layout" message
    description: str

    def detect(self, folder: Path) -> bool:
        """Whether ``folder`` looks like this layout (cheap: file names only)."""
        ...

    def open(self, folder: Path, options: Mapping[str, Any]) -> ScanSource:
        """The folder as a source; ``options`` are the scan options (``orbit``, ...); one-line
        ``UserError`` for a folder that is not readable."""
        ...


#: the registered layouts, in detection order
REGISTRY: Registry[Layout] = Registry("layout", Layout, builtins=(
    "ctdip.core.data.ctdip_layout", "ctdip.core.data.walnut_layout"))


# the registry's functions under their layout names: register_layout(layout, replace=False),
# unregister_layout(name), layouts() (name -> layout, detection order), layout_names(), get_layout(name)
register_layout = REGISTRY.register
unregister_layout = REGISTRY.unregister
layouts = REGISTRY.all
layout_names = REGISTRY.names
get_layout = REGISTRY.get


def find_layout(folder: Path) -> Layout:
    """The first registered layout that detects ``folder``; a one-line UserError listing what each
    layout expects when none does."""
    known = layouts().values()
    for layout in known:
        if layout.detect(folder):
            return layout
    expected = " or ".join(f"{lay.description} ({lay.name} layout)" for lay in known)
    raise UserError(f"unknown scan layout: expected {expected}", path=folder)

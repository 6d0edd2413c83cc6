"""``ctdip simulate OUT``: write a simulated scan folder (ctdip or walnut layout) with reference.tif."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate_cmd(
        out: Path = typer.Argument(..., help="Output scan folder."),
        phantom: str = typer.Option("walnut", "--phantom", help="walnut, shepp-logan or ellipses."),
        from_volume: Optional[Path] = typer.Option(None, "--from-volume", help="Use a volume (.npy/.tif, attenuation per mm) instead of a phantom."),
        hu: bool = typer.Option(False, "--hu", help="--from-volume is in Hounsfield units (converted with mu_water = 0.0192/mm)."),
        geometry: str = typer.Option("fan", "--geometry", help="parallel, fan (2D) or cone (3D)."),
        angles: int = typer.Option(60, "--angles", help="Number of views over 360 degrees."),
        size: int = typer.Option(128, "--size", help="Volume grid N (N x N, or N^3 for cone)."),
        detector: Optional[int] = typer.Option(None, "--detector", help="Detector columns (default: matched to the grid)."),
        fov_mm: float = typer.Option(40.0, "--fov-mm", help="Field of view (volume width) in mm."),
        noise: float = typer.Option(0.0, "--noise", help="Gaussian noise, relative to mean |Ax| (EDIP: 0.05)."),
        photons: Optional[float] = typer.Option(None, "--photons", help="Poisson noise with I0 photons (writes raw counts + flats)."),
        layout: str = typer.Option("ctdip", "--layout", help="ctdip or walnut."),
        seed: int = typer.Option(0, "--seed", help="Seed for the phantom and the noise."),
        force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing."),
        json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Simulate a scan: phantom -> projections (+ noise) -> scan folder with reference.tif."""
        import json
        import sys

        from ctdip.core.data.simulate import PHANTOM_NAMES, simulate
        from ctdip.errors import UserError

        if from_volume is None and phantom not in PHANTOM_NAMES:
            raise UserError(f"unknown phantom '{phantom}'; choose one of: {', '.join(PHANTOM_NAMES)}")
        s = simulate(out, phantom=phantom, geometry=geometry, angles=angles, size=size, detector=detector,
                     noise=noise, photons=photons, layout=layout, seed=seed, from_volume=from_volume, hu=hu,
                     fov_mm=fov_mm, force=force, quiet=quiet or json_out)
        if json_out:
            sys.stdout.write(json.dumps(s, indent=2) + "\n")
        elif not quiet:
            from rich.console import Console

            if s["noise"] == "poisson":
                noise_txt = f"Poisson noise, I0 = {photons:g}"
            elif s["noise"] == "gaussian":
                noise_txt = f"{noise:g} relative Gaussian noise"
            else:
                noise_txt = "no noise"
            Console(highlight=False).print(
                f"[bold]{s['phantom']}[/bold]: {geometry} beam, {angles} views, {size} px grid "
                f"({s['voxel_mm']:.3g} mm voxels), detector {s['detector'][0]}x{s['detector'][1]}, {noise_txt}\n"
                f"  wrote {out} ({layout} layout) with reference.tif")

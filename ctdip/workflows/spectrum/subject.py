"""What ``ctdip spectrum`` analyses: a network at its parameters, its input ``z`` and the Problem
whose operator ``A`` enters ``J = d(A f_theta(z)) / d theta`` -- from a DIP run folder or a weights
file of ``ctdip pretrain``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ctdip.errors import UserError

if TYPE_CHECKING:
    from ctdip.core.problem import Problem


@dataclass
class Subject:
    """A network at its parameters, its input and the problem whose operator it is analysed with."""

    net: torch.nn.Module
    z: torch.Tensor
    problem: "Problem"
    source: Path
    info: dict = field(default_factory=dict)


def load_subject(source: str | Path, scan: str | Path | None = None, scan_options: dict | None = None,
                 device: str = "cpu", input_kind: str = "fbp", seed: int = 0, backend: str | None = None) -> Subject:
    """Network, input and problem for ``ctdip spectrum``.

    ``source`` is a DIP run folder (its ``checkpoint.pt`` holds ``network_arch``, ``network`` and
    the input ``z``; the scan folder, scan options, backend and held-out views come from its
    config.yaml, ``scan``/``scan_options`` override them) or a weights file of ``ctdip pretrain``
    (then ``scan`` is required and the input is the FBP of the scan, as in EDIP, or seeded noise
    with ``input_kind="noise"``).
    """
    from ctdip.dip.runs import RunFolder
    from ctdip.networks import build_network
    from ctdip.networks.weights import build_from_weights, load_weights
    from ctdip.workflows.resume import RunScan, run_scan

    source = Path(source)
    info: dict = {"source": str(source)}
    z = None
    if source.is_dir():
        run = RunFolder(source)
        try:
            ck = run.load_checkpoint()
        except Exception as e:  # unreadable / not weights_only-safe
            raise UserError(f"cannot read checkpoint ({type(e).__name__})", path=run.file("checkpoint.pt")) from None
        if not ck and (source / "members").is_dir():  # ctdip.workflows.ensemble: a network per member
            first = sorted((source / "members").glob("seed*"))
            hint = f" (e.g. {first[0]})" if first else ""
            raise UserError(f"an ensemble has one network per member: give a member's run folder{hint}",
                            path=source)
        if not ck or "network_arch" not in ck or "network" not in ck:
            raise UserError("no network checkpoint (spectrum needs a DIP run; classical methods have no network)",
                            path=source)
        cfg = run.read_config() if run.file("config.yaml").exists() else {}
        how = run_scan(source, scan, scan_options)
        net = build_network(dict(ck["network_arch"]))
        try:
            net.load_state_dict(ck["network"])
        except RuntimeError as e:
            raise UserError(f"checkpoint does not match its architecture: {str(e).splitlines()[0]}",
                            path=run.file("checkpoint.pt")) from None
        z = ck.get("z")
        info.update(kind="run", method=cfg.get("method"), iteration=ck.get("iteration"))
    elif source.is_file():
        obj = load_weights(source, kind="unet")
        net = build_from_weights(obj, source)
        info.update(kind="weights", geometry_key=obj.get("geometry_key"))
        if scan is None:
            raise UserError("--scan is required with a weights file (the operator A comes from the scan)", path=source)
        how = RunScan(folder=Path(scan), options={k: v for k, v in dict(scan_options or {}).items() if v is not None})
    else:
        raise UserError("no such run folder or weights file", path=source)
    problem = how.problem(device=device, backend=backend)
    shape = (1, int(getattr(net, "in_channels", None) or _in_channels(net)), *problem.image_shape)
    if z is None:
        if input_kind == "fbp":
            z = problem.to_image(problem.x_init).detach().expand(shape).contiguous()
        elif input_kind == "noise":
            z = 0.1 * torch.randn(shape, generator=torch.Generator().manual_seed(int(seed)))
        else:
            raise UserError(f"--input must be fbp or noise, got '{input_kind}'")
        info["input"] = input_kind
    z = z.float().to(problem.device)
    if tuple(z.shape[2:]) != tuple(problem.image_shape):
        raise UserError(f"network input {tuple(z.shape[2:])} does not match the scan's image grid "
                        f"{tuple(problem.image_shape)} (same --size/--slice/--mode as the run?)", path=source)
    info.update(scan=str(how.folder), scan_options=how.options, image_shape=list(problem.image_shape))
    return Subject(net=net.to(problem.device).eval(), z=z, problem=problem, source=source, info=info)


def _in_channels(net: torch.nn.Module) -> int:
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)):
            return m.in_channels
    return 1


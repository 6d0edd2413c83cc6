"""RayTransform: adjoint identities, agreement with ASTRA and between backends, autograd, norm, cache."""

from __future__ import annotations

import astra
import numpy as np
import pytest
import torch

from ctdip.core.geometry import ProjectionGeometry as PG
from ctdip.core.geometry import VolumeGeometry as VG
from ctdip.core.operators import RayTransform, _astra_cuda
from ctdip.core.operators._torch import _pixel_centres
from ctdip.core.operators.backend import (
    Backend,
    BackendDefaults,
    Projector,
    auto_backend,
    backend_names,
    backends,
    get_backend,
    register_backend,
    unregister_backend,
)
from ctdip.errors import UserError

CUDA = _astra_cuda.available()


def _device(name: str) -> str:
    """The device a backend's tests run on: CPU when it runs there, else its first device."""
    devices = get_backend(name).devices
    return "cpu" if "cpu" in devices else devices[0]


def backend_cases(cases, exclude: tuple[str, ...] = ()) -> list:
    """(backend, case) parameters for every registered backend (as deepinv's tests walk an OPERATORS
    list); a backend unavailable here is skipped with its own one-line reason."""
    out = []
    for name, b in backends().items():
        if name in exclude:
            continue
        reason = b.unavailable_reason()
        mark = pytest.mark.skipif(reason is not None, reason=f"{name}: {reason}")
        out += [pytest.param(name, c, marks=mark, id=f"{name}-{c}") for c in cases]
    return out


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CTDIP_CACHE_DIR", str(tmp_path / "cache"))


def _geoms():
    a2 = np.linspace(0, np.pi, 24, endpoint=False)
    a3 = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    return {
        "parallel2d": (PG.circular("parallel", a2, 40, pixel_mm=0.8), VG((1, 24, 24), 1.0)),
        "fan2d": (PG.circular("fan", a3, 48, pixel_mm=1.0, source_origin_mm=60, source_detector_mm=120,
                              offset_u_mm=0.3), VG((1, 24, 24), 1.0)),
        "parallel3d": (PG.circular("parallel3d", a2, 24, det_rows=12, pixel_mm=1.2), VG((10, 16, 16), 1.0)),
        "cone3d": (PG.circular("cone", a3, 32, det_rows=16, pixel_mm=1.0, source_origin_mm=60,
                               source_detector_mm=120), VG((12, 16, 16), 1.0, (0.5, 0.0, 0.0))),
    }


CASES = ("parallel2d", "fan2d", "parallel3d", "cone3d")


def _check_adjoint(A: RayTransform, dev: str) -> None:
    """<A x, y> = <x, A^T y> on batched random data, batched = one at a time, A x not zero."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand((2, 1, *A.domain_shape), generator=gen).to(dev)
    y = torch.rand((2, 1, *A.range_shape), generator=gen).to(dev)
    Ax, Aty = A(x), A.T(y)
    assert Ax.shape == (2, 1, *A.range_shape) and Aty.shape == (2, 1, *A.domain_shape)
    for b in range(2):
        lhs = float((Ax[b].double() * y[b].double()).sum())
        rhs = float((x[b].double() * Aty[b].double()).sum())
        err = abs(lhs - rhs) / (float(Ax[b].norm()) * float(y[b].norm()))
        assert err < 1e-4, err
    assert float(Ax.abs().sum()) > 0
    # batched result equals one-at-a-time
    assert torch.allclose(A(x[1, 0]), Ax[1, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend,case", backend_cases(CASES))
def test_adjoint_identity(backend, case):
    g, v = _geoms()[case]
    dev = _device(backend)
    A = RayTransform(g, v, backend=backend, device=dev)
    assert A.backend == backend and isinstance(A._impl, Projector)
    _check_adjoint(A, dev)


def _astra_sino(g, v, img_ours, kernel):
    pid = astra.create_projector(kernel, g.to_astra(2), v.to_astra(2))
    try:
        sid, s = astra.create_sino(img_ours[0, ::-1].copy(), pid)  # ASTRA 2D rows run top-down
        astra.data2d.delete(sid)
    finally:
        astra.projector.delete(pid)
    return s


@pytest.mark.parametrize("case,kernel", [("parallel2d", "linear"), ("parallel2d", "strip"),
                                         ("parallel2d", "line"), ("fan2d", "line_fanflat")])
def test_matrix_equals_astra_create_sino(case, kernel):
    g, v = _geoms()[case]
    x = np.random.default_rng(2).random(v.shape).astype(np.float32)
    y = RayTransform(g, v, backend="matrix", kernel=kernel)(torch.from_numpy(x)).numpy()[:, 0]
    s = _astra_sino(g, v, x, kernel)
    assert np.linalg.norm(y - s) / np.linalg.norm(s) < 1e-5


def _blobs(v: VG) -> np.ndarray:
    """Smooth phantom: a few Gaussians (voxel centres in mm)."""
    z, y, x = np.meshgrid(*(v.voxel_centers(i) for i in range(3)), indexing="ij")
    f = np.zeros(v.shape)
    for (cx, cy, s, a) in [(2.0, -3.0, 5.0, 1.0), (-5.0, 4.0, 3.0, 0.7), (4.0, 5.0, 2.5, 0.5)]:
        f += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * s**2))
    return f.astype(np.float32)


@pytest.mark.parametrize("case", ["parallel2d", "fan2d"])
def test_torch_matches_matrix_on_smooth_phantom(case):
    g, v = _geoms()[case]
    x = torch.from_numpy(_blobs(v))
    ym = RayTransform(g, v, backend="matrix")(x)
    yt = RayTransform(g, v, backend="torch")(x)
    rel = float((yt - ym).norm() / ym.norm())
    assert rel < 0.02, rel


@pytest.mark.parametrize("backend,case", backend_cases(CASES, exclude=("torch",)))
def test_backend_agrees_with_torch_marcher_on_smooth_phantom(backend, case):
    """Every backend's A and A^T agree with the torch ray marcher (the reference discretisation)
    on a smooth phantom: A x to 2 % and A^T y to 5 % for other discretisations (ASTRA's 2D
    kernels: 0.4 % and 3 %), to float rounding for the 3D matrix (the marcher written out)."""
    g, v = _geoms()[case]
    dev = _device(backend)
    x = torch.from_numpy(_blobs(v))
    A, T = RayTransform(g, v, backend=backend, device=dev), RayTransform(g, v, backend="torch")
    yt = T(x)
    ya = A(x.to(dev)).cpu()
    rel = float((ya - yt).norm() / yt.norm())
    assert rel < 0.02, rel
    back = float((A.T(yt.to(dev)).cpu() - T.T(yt)).norm() / T.T(yt).norm())
    assert back < 0.05, back
    if backend == "matrix" and not g.is_2d:
        assert rel < 1e-5 and back < 1e-5, (rel, back)


def test_torch_cone_matches_analytic_ellipsoid():
    """Ellipsoid with density 1 - r^2 (r: normalised radius): the integral along a chord of
    parameter length L through it is |d'|^2 L^3 / 6, with d' the ray direction in unit-sphere
    coordinates. (A uniform ellipsoid's sharp edge adds ~1/(radius in voxels) of voxelisation
    error, about 5 % at this size, which is not the projector's.)"""
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    g = PG.circular("cone", ang, 40, det_rows=32, pixel_mm=1.0, source_origin_mm=80, source_detector_mm=120)
    v = VG((24, 24, 24), 1.0)
    cen, ax = np.array([1.0, -2.0, 0.5]), np.array([9.0, 7.0, 6.0])  # (x, y, z)
    zc, yc, xc = np.meshgrid(*(v.voxel_centers(i) for i in range(3)), indexing="ij")
    q = ((xc - cen[0]) / ax[0]) ** 2 + ((yc - cen[1]) / ax[1]) ** 2 + ((zc - cen[2]) / ax[2]) ** 2
    x = torch.from_numpy(np.clip(1 - q, 0, None).astype(np.float32))
    P = _pixel_centres(torch.as_tensor(g.vectors), *g.det_shape).numpy()
    s = g.vectors[:, None, None, 0:3]
    d = (P - s) / np.linalg.norm(P - s, axis=-1, keepdims=True)
    o, dd = (s - cen) / ax, d / ax
    a, b, c = (dd * dd).sum(-1), 2 * (o * dd).sum(-1), (o * o).sum(-1) - 1
    L = np.sqrt(np.clip(b * b - 4 * a * c, 0, None)) / a
    ya = a * L**3 / 6
    y = RayTransform(g, v, backend="torch")(x).numpy()
    rel = np.linalg.norm(y - ya) / np.linalg.norm(ya)
    assert rel < 0.02, rel
    assert ya.max() > 5  # the ellipsoid is really seen


@pytest.mark.parametrize("backend,case", backend_cases(("fan2d",)))
def test_autograd_backward_is_adjoint(backend, case):
    g, v = _geoms()[case]
    dev = _device(backend)
    A = RayTransform(g, v, backend=backend, device=dev)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(v.shape, generator=gen).to(dev).requires_grad_(True)
    y = torch.rand(A.range_shape, generator=gen).to(dev)
    loss = 0.5 * ((A(x) - y) ** 2).sum()
    loss.backward()
    expect = A.T(A(x.detach()) - y)
    assert torch.allclose(x.grad, expect, rtol=1e-4, atol=1e-4 * float(expect.abs().max()))
    # and through the adjoint
    yy = y.clone().requires_grad_(True)
    (A.T(yy) * x.detach()).sum().backward()
    assert torch.allclose(yy.grad, A(x.detach()), rtol=1e-4, atol=1e-4 * float(yy.grad.abs().max()))


def test_norm_matches_dense_svd_and_is_cached(tmp_path):
    g, v = _geoms()["parallel2d"]
    A = RayTransform(g, v, backend="matrix")
    M = A(torch.eye(24 * 24).reshape(-1, *v.shape)).reshape(24 * 24, -1).numpy().T  # dense, column by column
    sigma = np.linalg.norm(M, 2)
    nrm = A.norm()
    assert abs(nrm - sigma) / sigma < 1e-3
    files = list((tmp_path / "cache" / "norms").glob("*.json"))
    assert len(files) == 1
    B = RayTransform(g, v, backend="matrix")
    assert B.norm() == nrm  # read back from disk
    assert A.T.norm() == nrm


def test_matrix_cache_budget_and_auto(tmp_path, monkeypatch):
    g, v = _geoms()["fan2d"]
    A = RayTransform(g, v)  # auto on CPU, 2D -> matrix
    assert A.backend == "matrix"
    files = list((tmp_path / "cache" / "matrices").glob("*.npz"))
    assert len(files) == 1 and g.hash() in files[0].name and "line_fanflat" in files[0].name
    x = torch.from_numpy(_blobs(v))
    y1 = A(x)
    B = RayTransform(g, v, backend="matrix")  # loaded from the cache
    assert torch.equal(B(x), y1)
    monkeypatch.setenv("CTDIP_MATRIX_BUDGET_GB", "1e-6")
    g2 = g.subsample(12)
    with pytest.raises(UserError, match="budget"):
        RayTransform(g2, v, backend="matrix")
    assert RayTransform(g2, v).backend == "torch"  # auto falls back
    assert RayTransform(*_geoms()["cone3d"]).backend == "torch"  # 3D too
    with pytest.raises(UserError, match="trilinear system matrix .* budget"):
        RayTransform(*_geoms()["cone3d"], backend="matrix")
    with pytest.raises(UserError, match="2D geometry"):
        RayTransform(*_geoms()["cone3d"], backend="matrix", kernel="linear")


@pytest.mark.parametrize("case", ["parallel3d", "cone3d"])
def test_matrix3d_equals_torch_ray_marcher(case, tmp_path):
    """The 3D system matrix is the torch marcher written out: A and A^T agree to float rounding,
    for the default (two samples per voxel) and the coarse (one per voxel) discretisation."""
    from ctdip.core.operators._matrix import MatrixRayTransform
    from ctdip.core.operators._torch import TorchRayTransform

    g, v = _geoms()[case]
    gen = torch.Generator().manual_seed(5)
    x = torch.rand((2, *v.shape), generator=gen)
    y = torch.rand((2, g.n_views, *g.det_shape), generator=gen)
    cpu = torch.device("cpu")
    for kernel, step in (("trilinear", 0.5), ("trilinear-coarse", 1.0)):
        M = MatrixRayTransform(g, v, cpu, kernel)
        T = TorchRayTransform(g, v, cpu, step_fraction=step)
        for a, b in ((M.forward(x), T.forward(x)), (M.adjoint(y), T.adjoint(y))):
            assert float((a - b).norm() / b.norm()) < 1e-5
    assert any(f.name.endswith(f"-{v.hash()}-trilinear.npz") for f in (tmp_path / "cache" / "matrices").iterdir())


def test_auto_picks_3d_matrix_on_cpu_and_estimates_nnz(tmp_path):
    from ctdip.core.operators._matrix import build_march_matrix, estimate_nnz

    g, v = _geoms()["cone3d"]
    A = RayTransform(g, v)
    assert A.backend == "matrix" and A._impl.kernel == "trilinear"
    nnz = A._impl.nnz
    assert nnz == build_march_matrix(g, v, progress=False).nnz
    est = estimate_nnz(g, v, "trilinear")
    assert nnz <= est <= 1.3 * nnz, (est, nnz)
    x = torch.from_numpy(_blobs(v))
    assert float((A(x) - RayTransform(g, v, backend="torch")(x)).norm() / A(x).norm()) < 1e-5
    files = list((tmp_path / "cache" / "matrices").glob("*.npz"))
    assert len(files) == 1 and g.hash() in files[0].name


def test_scipy_and_torch_sparse_engines_agree():
    from ctdip.core.operators._matrix import MatrixRayTransform

    g, v = _geoms()["parallel2d"]
    x = torch.rand((3, *v.shape), generator=torch.Generator().manual_seed(4))
    a = MatrixRayTransform(g, v, torch.device("cpu"), engine="scipy")
    b = MatrixRayTransform(g, v, torch.device("cpu"), engine="torch")
    assert torch.allclose(a.forward(x), b.forward(x), rtol=1e-5, atol=1e-5)
    y = a.forward(x)
    assert torch.allclose(a.adjoint(y), b.adjoint(y), rtol=1e-5, atol=1e-4)


def test_user_errors():
    g, v = _geoms()["parallel2d"]
    A = RayTransform(g, v, backend="matrix")
    with pytest.raises(UserError, match="must end with shape"):
        A(torch.zeros(1, 10, 10))
    with pytest.raises(UserError, match="unknown backend"):
        RayTransform(g, v, backend="fast")
    with pytest.raises(UserError, match="kernel"):
        RayTransform(g, v, backend="matrix", kernel="line_fanflat")
    if not CUDA:
        with pytest.raises(UserError):
            RayTransform(g, v, backend="astra-cuda")


def test_astra_cuda_geometry_dicts_on_cpu():
    """What the astra-cuda backend hands to ASTRA: 3D vector dicts, 2D as one slice."""
    g, v = _geoms()["fan2d"]
    pg, vg = _astra_cuda.astra_geometries(g, v)
    assert pg["type"] == "cone_vec" and pg["DetectorRowCount"] == 1 and pg["DetectorColCount"] == 48
    np.testing.assert_array_equal(pg["Vectors"], g.vectors)
    assert vg["GridSliceCount"] == 1 and vg["GridRowCount"] == 24 and vg["GridColCount"] == 24
    assert np.isclose(vg["option"]["WindowMinZ"], -0.5) and np.isclose(vg["option"]["WindowMaxZ"], 0.5)


@pytest.mark.skipif(not CUDA, reason="needs CUDA + ASTRA CUDA")
@pytest.mark.parametrize("case", ["fan2d", "cone3d"])
def test_astra_cuda_agrees_with_cpu_backends(case):
    g, v = _geoms()[case]
    x = torch.from_numpy(_blobs(v))
    ref = RayTransform(g, v, backend="matrix" if case == "fan2d" else "torch")(x)
    yc = RayTransform(g, v, backend="astra-cuda", device="cuda")(x.cuda()).cpu()
    assert float((yc - ref).norm() / ref.norm()) < 0.02
    assert RayTransform(g, v, device="cuda").backend == "astra-cuda"


# ---------------------------------------------------------------------------- the backend registry
def test_registry_lists_the_builtin_backends_in_order():
    assert backend_names() == ("matrix", "torch", "astra-cuda")
    import ctdip.core.operators as ops

    assert ops.BACKENDS == ("auto", "matrix", "torch", "astra-cuda")
    for name, b in backends().items():
        assert isinstance(b, Backend) and b.name == name and b.description and b.devices
    assert [b.name for b in sorted(backends().values(), key=lambda b: b.auto_rank)] == \
        ["astra-cuda", "matrix", "torch"]
    assert get_backend("astra-cuda").devices == ("cuda",)
    reason = get_backend("astra-cuda").unavailable_reason()
    assert (reason is None) == CUDA and (reason is None or "\n" not in reason)
    g, v = _geoms()["fan2d"]
    assert get_backend("matrix").memory_bytes(g, v) > 0 and get_backend("torch").memory_bytes(g, v) is None


@pytest.mark.parametrize("budget_gb,on_cpu,on_cuda", [
    (None, {"parallel2d": "matrix", "fan2d": "matrix", "parallel3d": "matrix", "cone3d": "matrix"},
     {"parallel2d": "matrix", "fan2d": "matrix", "parallel3d": "torch", "cone3d": "torch"}),
    ("1e-6", dict.fromkeys(CASES, "torch"), dict.fromkeys(CASES, "torch")),
])
def test_auto_choice_is_the_documented_rule(monkeypatch, budget_gb, on_cpu, on_cuda):
    """auto: astra-cuda on CUDA when ASTRA has CUDA, else matrix for 2D on any device and 3D on CPU
    within the memory budget, else torch (the choice only; nothing is built, so CUDA's row is
    checked on a CPU machine too)."""
    if budget_gb:
        monkeypatch.setenv("CTDIP_MATRIX_BUDGET_GB", budget_gb)
    for case, (g, v) in _geoms().items():
        assert auto_backend(g, v, torch.device("cpu")).name == on_cpu[case]
        assert auto_backend(g, v, torch.device("cuda")).name == ("astra-cuda" if CUDA else on_cuda[case])
    with pytest.raises(UserError, match="2D geometry"):  # a kernel that cannot work is an error, not a fallback
        auto_backend(*_geoms()["cone3d"], torch.device("cpu"), kernel="linear")


class _DenseMatrix:
    """A toy Projector: the matrix backend's M as a dense array."""

    def __init__(self, g, v):
        from ctdip.core.operators._matrix import MatrixRayTransform

        self.M = torch.from_numpy(MatrixRayTransform(g, v, torch.device("cpu")).M.toarray())
        self.out, self.vol = (g.n_views, *g.det_shape), tuple(v.shape)

    def forward(self, x):
        return (x.reshape(len(x), -1) @ self.M.T).reshape(len(x), *self.out)

    def adjoint(self, y):
        return (y.reshape(len(y), -1) @ self.M).reshape(len(y), *self.vol)


class _ToyBackend(BackendDefaults):
    name = "toy-dense"
    description = "dense copy of the 2D system matrix (test only)"
    devices = ("cpu",)
    auto_rank = 0  # before every built-in

    def fits(self, g, v, device, kernel=None):
        return g.is_2d and int(np.prod(v.shape)) <= 4096

    def create(self, g, v, device, kernel=None):
        return _DenseMatrix(g, v)


def test_a_registered_toy_backend_is_used_and_removed():
    g, v = _geoms()["fan2d"]
    register_backend(_ToyBackend())
    try:
        assert backend_names() == ("matrix", "torch", "astra-cuda", "toy-dense")
        with pytest.raises(ValueError, match="already registered"):
            register_backend(_ToyBackend())
        A = RayTransform(g, v, backend="toy-dense")
        assert A.backend == "toy-dense"
        _check_adjoint(A, "cpu")
        x = torch.from_numpy(_blobs(v))
        assert torch.allclose(A(x), RayTransform(g, v, backend="matrix")(x), rtol=1e-5, atol=1e-4)
        assert RayTransform(g, v).backend == "toy-dense"  # auto: rank 0 and fits
        assert RayTransform(*_geoms()["cone3d"]).backend == "matrix"  # does not fit 3D
        with pytest.raises(UserError, match="expected one of auto, matrix, torch, astra-cuda, toy-dense"):
            RayTransform(g, v, backend="fast")
    finally:
        unregister_backend("toy-dense")
    assert backend_names() == ("matrix", "torch", "astra-cuda")
    assert RayTransform(g, v).backend == "matrix"
    with pytest.raises(UserError, match="unknown backend 'toy-dense'; expected one of auto, matrix, torch, astra-cuda$"):
        RayTransform(g, v, backend="toy-dense")
    with pytest.raises(TypeError, match="Backend protocol"):
        register_backend(object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="reserved"):
        register_backend(type("Auto", (_ToyBackend,), {"name": "auto"})())

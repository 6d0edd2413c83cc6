"""Ray transforms (A, A^T) with interchangeable backends, and FBP/FDK.

INTERFACE CONTRACT (filled in by the operators work; other modules code against these names):

    A = RayTransform(geometry, volume, backend="auto", device="cpu")
    y = A(x)        # x: (..., z, y, x) float32 torch tensor -> (..., angles, rows, cols)
    x = A.T(y)      # adjoint, same leading dims; autograd works through both
    A.norm()        # operator 2-norm estimate (power iteration, cached)
    A.range_shape   # (angles, rows, cols); A.domain_shape  # (z, y, x)
    A.backend       # the backend actually used

    fbp(y, geometry, volume, filter="ram-lak", ...) -> torch.Tensor (z, y, x)   # parallel/fan FBP, cone FDK
"""

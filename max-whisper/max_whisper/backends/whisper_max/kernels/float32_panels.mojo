"""Float32 rows times a float32 matrix held as panels of 32 columns, with the encoder's epilogues: the
products of MAX's CPU encoder (its convolutions, its blocks' matrices) and of the cross-attention keys
and values.

``y = act(x W + b) (+ r)``: a bias, then GELU or nothing, then a residual or nothing, all applied while
a block of ``y`` is in registers. Each block of MR rows by one panel sums its products over the whole
contraction in registers, in order, one multiply-add per term: MAX's CPU matmul sums in the same order,
and the two give the same bits (docs/performance.md, entry 48).

A convolution of kernel ``taps`` and stride ``stride`` over time is the same product: with ``x`` the
input frames (time, channels), zero-padded by one frame at each end, output frame t reads the
``taps * channels`` consecutive floats from frame ``stride * t`` on, so row t of the product's left
side starts ``stride * channels`` floats after row t - 1 (overlapping rows; no copy of the columns is
made). A plain product is ``taps = stride = 1``.

Why not MAX's matmul: it gives the same numbers at the same rate, but every graph that holds one pays
about a minute of compiling (its kernel library), where this op costs a second or two.
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import ceildiv, erf
from std.sys import simd_width_of

comptime PANEL = 32
"""Columns of the weight per panel (``weights.FLOAT32_PANEL_WIDTH``): two 16-wide float32 vectors."""
comptime W = simd_width_of[DType.float32]()
"""float32 lanes per vector: 16 with AVX-512, 8 with AVX2, 4 with Neon."""
comptime NV = PANEL // W
"""Vectors per panel row."""
comptime MR = 12 if W >= 16 else (3 if W == 8 else 2)
"""Rows of ``y`` held in registers at a time: 12 x 2 accumulators of AVX-512's 32 vector registers, 3 x 4
of AVX2's 16, 2 x 8 of Neon's 32."""
comptime CHUNK_BLOCKS = 4
"""Blocks of MR rows per work item: a work item runs every panel over its rows, which stay in cache."""
comptime ACT_NONE = 0
comptime ACT_GELU = 1
"""``act``: nothing, or whisper's exact GELU, ``x (1 + erf(x / sqrt 2)) / 2``."""


@always_inline
def gelu(x: SIMD[DType.float32, W]) -> SIMD[DType.float32, W]:
    return 0.5 * x * (1.0 + erf(x * Float32(0.7071067811865476)))


@always_inline
def block[rows: Int, act: Int, residual: Bool, output: MutOrigin](
    x: UnsafePointer[Float32, _],
    x_stride: Int,
    k_total: Int,
    panel: UnsafePointer[Float32, _],
    bias: UnsafePointer[Float32, _],
    r: UnsafePointer[Float32, _],
    y: UnsafePointer[Float32, output],
    n_total: Int,
    n_cols: Int,
):
    """``rows`` rows of ``x`` (``x_stride`` floats apart) times one panel into ``n_cols`` columns of ``y``
    (rows ``n_total`` apart), from the panel's first column; ``bias`` and ``r`` start at that column."""
    var acc = Array[SIMD[DType.float32, W], rows * NV](fill=0)
    for k in range(k_total):
        var w = Array[SIMD[DType.float32, W], NV](fill=0)
        comptime for v in range(NV):
            w[v] = (panel + k * PANEL + v * W).load[width=W]()
        comptime for i in range(rows):
            var a = SIMD[DType.float32, W](x[i * x_stride + k])
            comptime for v in range(NV):
                acc[i * NV + v] = a.fma(w[v], acc[i * NV + v])
    comptime for v in range(NV):
        var col = v * W
        if col + W <= n_cols:
            var b = (bias + col).load[width=W]()
            comptime for i in range(rows):
                var out = acc[i * NV + v] + b
                comptime if act == ACT_GELU:
                    out = gelu(out)
                comptime if residual:
                    out += (r + i * n_total + col).load[width=W]()
                (y + i * n_total + col).store(out)
        else:  # the last panel's columns past the matrix are padding: not stored
            for j in range(max(0, n_cols - col)):
                comptime for i in range(rows):
                    var out = acc[i * NV + v][j] + bias[col + j]
                    comptime if act == ACT_GELU:
                        out = gelu(SIMD[DType.float32, W](out))[0]
                    comptime if residual:
                        out += r[i * n_total + col + j]
                    y[i * n_total + col + j] = out


def product[act: Int, residual: Bool, stride: Int, taps: Int](
    y: UnsafePointer[Float32, MutAnyOrigin],
    x: UnsafePointer[Float32, ImmutAnyOrigin],
    panels: UnsafePointer[Float32, ImmutAnyOrigin],
    bias: UnsafePointer[Float32, ImmutAnyOrigin],
    r: UnsafePointer[Float32, ImmutAnyOrigin],
    r_batch_stride: Int,
    n_batch: Int,
    m_total: Int,
    n_total: Int,
    x_rows: Int,
    channels: Int,
    n_panels: Int,
):
    """Work items of CHUNK_BLOCKS * MR rows of one batch entry each, every panel in turn over those rows."""
    var k_total = taps * channels
    var x_stride = stride * channels
    comptime CHUNK = CHUNK_BLOCKS * MR
    var chunks = ceildiv(m_total, CHUNK)

    def task(t: Int) {
        imm y, imm x, imm panels, imm bias, imm r, imm r_batch_stride, imm m_total, imm n_total, imm x_rows,
        imm channels, imm n_panels, imm k_total, imm x_stride, imm chunks
    }:
        var batch = t // chunks
        var m_lo = (t % chunks) * CHUNK
        var m_hi = min(m_lo + CHUNK, m_total)
        var xb = x + batch * x_rows * channels
        var yb = y + batch * m_total * n_total
        var rb = r + batch * r_batch_stride
        for p in range(n_panels):
            var panel = panels + p * k_total * PANEL
            var col = p * PANEL
            var n_cols = min(PANEL, n_total - col)
            var m = m_lo
            while m + MR <= m_hi:
                block[MR, act, residual](
                    xb + m * x_stride, x_stride, k_total, panel, bias + col, rb + m * n_total + col,
                    yb + m * n_total + col, n_total, n_cols,
                )
                m += MR
            var left = m_hi - m  # the rows left over, in a block of their own size
            comptime for n in range(1, MR):
                if left == n:
                    block[n, act, residual](
                        xb + m * x_stride, x_stride, k_total, panel, bias + col, rb + m * n_total + col,
                        yb + m * n_total + col, n_total, n_cols,
                    )

    sync_parallelize(task, n_batch * chunks)


def check_shapes[stride: Int, taps: Int](
    y_batch: Int, m_total: Int, n_total: Int, x_batch: Int, x_rows: Int, channels: Int, n_panels: Int,
    k_panel: Int, n_bias: Int,
) raises:
    if x_batch != y_batch or k_panel != taps * channels or n_panels != ceildiv(n_total, PANEL) or n_bias != n_total:
        raise Error("linear_float32_panels: x (B, rows, C), panels (ceil(N / 32), taps * C, 32), bias (N), y (B, M, N)")
    if stride * (m_total - 1) + taps > x_rows:
        raise Error("linear_float32_panels: y has more rows than x makes")


@extensibility.register("linear_float32_panels")
struct LinearFloat32Panels:
    """``y = act(x W + b)``: x (B, rows, C) float32, W (taps * C, N) held as float32 panels (ceil(N / 32),
    taps * C, 32) (column n of W is ``panels[n // 32, :, n % 32]``), b (N); y (B, M, N). With ``taps`` or
    ``stride`` above 1, a convolution over x's rows (see the module's docstring)."""

    @staticmethod
    def execute[
        target: StaticString, act: Int, stride: Int, taps: Int
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        x: InputTensor[dtype=DType.float32, rank=3, ...],
        panels: InputTensor[dtype=DType.float32, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        check_shapes[stride, taps](
            y.dim_size(0), y.dim_size(1), y.dim_size(2), x.dim_size(0), x.dim_size(1), x.dim_size(2),
            panels.dim_size(0), panels.dim_size(1), bias.dim_size(0),
        )
        product[act, False, stride, taps](
            y.unsafe_ptr(), x.unsafe_ptr(), panels.unsafe_ptr(), bias.unsafe_ptr(), bias.unsafe_ptr(), 0,
            y.dim_size(0), y.dim_size(1), y.dim_size(2), x.dim_size(1), x.dim_size(2), panels.dim_size(0),
        )


@extensibility.register("linear_float32_panels_residual")
struct LinearFloat32PanelsResidual:
    """``y = act(x W + b) + r``, as ``linear_float32_panels`` with a residual r (B, M, N), or (1, M, N)
    shared by every batch entry (the encoder's positional embedding)."""

    @staticmethod
    def execute[
        target: StaticString, act: Int, stride: Int, taps: Int
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        x: InputTensor[dtype=DType.float32, rank=3, ...],
        panels: InputTensor[dtype=DType.float32, rank=3, ...],
        bias: InputTensor[dtype=DType.float32, rank=1, ...],
        r: InputTensor[dtype=DType.float32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        check_shapes[stride, taps](
            y.dim_size(0), y.dim_size(1), y.dim_size(2), x.dim_size(0), x.dim_size(1), x.dim_size(2),
            panels.dim_size(0), panels.dim_size(1), bias.dim_size(0),
        )
        if r.dim_size(1) != y.dim_size(1) or r.dim_size(2) != y.dim_size(2):
            raise Error("linear_float32_panels_residual: a residual of y's shape")
        if r.dim_size(0) != y.dim_size(0) and r.dim_size(0) != 1:
            raise Error("linear_float32_panels_residual: a residual per batch entry, or one for all")
        var r_batch_stride = r.dim_size(1) * r.dim_size(2) if r.dim_size(0) > 1 else 0
        product[act, True, stride, taps](
            y.unsafe_ptr(), x.unsafe_ptr(), panels.unsafe_ptr(), bias.unsafe_ptr(), r.unsafe_ptr(), r_batch_stride,
            y.dim_size(0), y.dim_size(1), y.dim_size(2), x.dim_size(1), x.dim_size(2), panels.dim_size(0),
        )

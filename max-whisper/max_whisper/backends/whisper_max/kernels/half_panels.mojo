"""Float32 rows times a float16-stored matrix: the products of MAX's CPU decoder (its logits and
its blocks' matrices).

Every value of openai-whisper's published checkpoints is a float16 number, so a float16 copy of the
decoder's matrices is the float32 model exactly, in half the bytes. MAX 26.7's CPU matmul has no
kernel that widens float16 weights while it multiplies (a cast before the matmul costs twice the
float32 product), so this op does: each weight is widened to float32 in registers and every
product and sum is float32.
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import ceildiv
from std.sys import simd_width_of

comptime PANEL = 16
"""Columns of the weight per panel: one 16-wide float32 vector (two 8-wide ones on AVX2)."""
comptime ROWS = 12 if simd_width_of[DType.float32]() >= 16 else 5
"""Rows of ``x`` held in registers at a time, one accumulator of a panel's 16 columns each: 12 of
AVX-512's 32 vector registers (a burst's 17 rows in two blocks, 12 and 5), 10 of AVX2's 16."""
comptime K_BLOCK = 64
"""The contraction is summed in blocks of this many terms, each block's sum then added to the
total: closer to the exact sum than one running sum over the whole axis."""
comptime TASKS = 64
"""Work items the panels are split into, for MAX's CPU worker threads."""


@always_inline
def panel_rows[rows: Int, output: MutOrigin](
    x: UnsafePointer[Float32, _],
    panel: UnsafePointer[Float16, _],
    y: UnsafePointer[Float32, output],
    k_total: Int,
    n_total: Int,
    col: Int,
):
    """``rows`` rows of ``x`` (from its first) times one panel, into ``y``'s columns ``col`` onward: each
    of the panel's weights is widened once and multiplies every row, whose sums stay in registers."""
    var total = Array[SIMD[DType.float32, PANEL], rows](fill=0)
    var k0 = 0
    while k0 < k_total:
        var acc = Array[SIMD[DType.float32, PANEL], rows](fill=0)
        for k in range(k0, min(k0 + K_BLOCK, k_total)):
            var w = (panel + k * PANEL).load[width=PANEL]().cast[DType.float32]()
            comptime for r in range(rows):
                acc[r] = SIMD[DType.float32, PANEL](x[r * k_total + k]).fma(w, acc[r])
        comptime for r in range(rows):
            total[r] += acc[r]
        k0 += K_BLOCK
    comptime for r in range(rows):
        var out = y + r * n_total + col
        if col + PANEL <= n_total:
            out.store(total[r])
        else:  # the last panel: only the columns that exist
            for j in range(n_total - col):
                out[j] = total[r][j]


@extensibility.register("matmul_float16_panels")
struct MatmulFloat16Panels:
    """``y = x @ w``: x (M, K) float32, w (K, N) held as float16 panels (ceil(N / 16), K, 16), so that
    column n of w is ``panels[n // 16, :, n % 16]`` (columns past N are padding); y (M, N) float32."""

    @staticmethod
    def execute[
        target: StaticString,
    ](
        y: OutputTensor[dtype=DType.float32, rank=2, ...],
        x: InputTensor[dtype=DType.float32, rank=2, ...],
        panels: InputTensor[dtype=DType.float16, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        var m_total = x.dim_size(0)
        var k_total = x.dim_size(1)
        var n_total = y.dim_size(1)
        var n_panels = panels.dim_size(0)
        var xp = x.unsafe_ptr()
        var wp = panels.unsafe_ptr()
        var yp = y.unsafe_ptr()
        var n_tasks = min(TASKS, n_panels)
        var per_task = ceildiv(n_panels, n_tasks)

        def task(t: Int) {imm xp, imm wp, imm yp, imm m_total, imm k_total, imm n_total, imm n_panels, imm per_task}:
            for p in range(t * per_task, min((t + 1) * per_task, n_panels)):
                var panel = wp + p * k_total * PANEL
                var col = p * PANEL
                var m0 = 0
                while m0 + ROWS <= m_total:
                    panel_rows[ROWS](xp + m0 * k_total, panel, yp + m0 * n_total, k_total, n_total, col)
                    m0 += ROWS
                # the rows left over (a burst's 17 rows end in a block of 5), in a block of their own size
                var left = m_total - m0
                comptime for n in range(1, ROWS):
                    if left == n:
                        panel_rows[n](xp + m0 * k_total, panel, yp + m0 * n_total, k_total, n_total, col)

        sync_parallelize(task, n_tasks)

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

comptime PANEL = 16
"""Columns of the weight per panel: one 16-wide float32 vector (two 8-wide ones on AVX2)."""
comptime ROWS = 5
"""Rows of ``x`` held in registers at a time (5 accumulators of a panel's 16 columns)."""
comptime K_BLOCK = 64
"""The contraction is summed in blocks of this many terms, each block's sum then added to the
total: closer to the exact sum than one running sum over the whole axis."""
comptime TASKS = 64
"""Work items the panels are split into, for MAX's CPU worker threads."""


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
                while m0 < m_total:
                    var rows = min(ROWS, m_total - m0)
                    var total = Array[SIMD[DType.float32, PANEL], ROWS](fill=0)
                    var k0 = 0
                    while k0 < k_total:
                        var acc = Array[SIMD[DType.float32, PANEL], ROWS](fill=0)
                        for k in range(k0, min(k0 + K_BLOCK, k_total)):
                            var w = (panel + k * PANEL).load[width=PANEL]().cast[DType.float32]()
                            comptime for r in range(ROWS):
                                # a burst's 17 rows end in a block of 2: the missing rows are skipped
                                if r < rows:
                                    acc[r] = SIMD[DType.float32, PANEL](xp[(m0 + r) * k_total + k]).fma(w, acc[r])
                        comptime for r in range(ROWS):
                            total[r] += acc[r]
                        k0 += K_BLOCK
                    comptime for r in range(ROWS):
                        if r < rows:
                            var out = yp + (m0 + r) * n_total + col
                            if col + PANEL <= n_total:
                                out.store(total[r])
                            else:  # the last panel: only the columns that exist
                                for j in range(n_total - col):
                                    out[j] = total[r][j]
                    m0 += ROWS

        sync_parallelize(task, n_tasks)

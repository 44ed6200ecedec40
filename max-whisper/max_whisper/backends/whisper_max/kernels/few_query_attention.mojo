"""Attention of a few query rows over many keys: the decoder's cross-attention on MAX's CPU.

A decoder pass has a few new tokens (a beam step's five rows, a burst's seventeen) against the
audio's 1500 keys and values per head. MAX 26.7's batched matmul runs such a product far below the
memory's rate on the CPU (docs/performance.md, entry 42), so this op streams each head's keys and
values once per block of rows: the scores of a chunk of keys are made in registers, folded into a
running softmax (a running maximum and sum, the output rescaled when the maximum grows), and the
chunk's values are added to the output while they are in cache. Each chunk's keys are 64 rows of
the transposed keys, 6 KB apart, so the next chunk's are prefetched while this one is scored (in a
decoder pass they come from memory, not cache: docs/performance.md, entry 43). Every product and sum
is float32.

A prompt's pass has many queries (up to 225 a window), which this row tiling scores well below the
matmul rate. From MANY queries on, the op runs ``lanes_attention.attend_lanes`` instead, on blocks of
W queries, one a vector lane (docs/performance.md, entry 45).
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import ceildiv, exp, sqrt
from std.sys.intrinsics import PrefetchOptions, prefetch

from .lanes_attention import CHUNK, FLOOR, HEAD, W, attend_lanes

comptime ROWS = 5
"""Query rows per work item, each with its own scores and output in the item's scratch."""
comptime MANY = 64
"""Queries per audio from which the op runs W-query blocks (``attend_lanes``) instead of ROWS-row blocks."""
comptime GROUPS = HEAD // W
"""Vectors per row of a head."""
comptime VECTORS = CHUNK // W
"""Vectors of scores per row and chunk."""


@extensibility.register("few_query_attention")
struct FewQueryAttention:
    """``y = softmax(q k^T / sqrt(64)) v`` per head, for queries q (A, Q, H * 64), keys held transposed
    k_t (A, H, 64, N) and values v (A, H, N, 64), the layouts of the decoder's cross K/V; y (A, Q, H * 64)
    with the heads side by side, as whisper merges them. Row ``a`` of q attends over row ``a`` of k_t
    and v (the audio that a group of beams or samples decodes)."""

    @staticmethod
    def execute[
        target: StaticString,
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        k_t: InputTensor[dtype=DType.float32, rank=4, ...],
        v: InputTensor[dtype=DType.float32, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        var n_audio = q.dim_size(0)
        var n_query = q.dim_size(1)
        var n_head = k_t.dim_size(1)
        var n_key = k_t.dim_size(3)
        if k_t.dim_size(2) != HEAD:
            raise Error("few_query_attention: the heads must be 64 wide")
        var qp = q.unsafe_ptr()
        var kp = k_t.unsafe_ptr()
        var vp = v.unsafe_ptr()
        var yp = y.unsafe_ptr()
        var state = n_head * HEAD
        var row_blocks = ceildiv(n_query, ROWS)
        var scale = Float32(1.0 / sqrt(Float64(HEAD)))
        if n_query >= MANY:
            var blocks = ceildiv(n_query, W)

            def lanes_task(t: Int) {
                imm qp, imm kp, imm vp, imm yp, imm n_query, imm n_head, imm n_key, imm state, imm blocks, imm scale
            }:
                var block = t % blocks
                var head = (t // blocks) % n_head
                var audio = t // (blocks * n_head)
                var i0 = block * W
                var n_rows = min(W, n_query - i0)  # the last block may hold fewer queries: its other lanes are 0
                var first = qp + (audio * n_query + i0) * state + head * HEAD
                # q[d]: dimension d of the block's queries, one lane a query, already scaled
                var q = Array[SIMD[DType.float32, W], HEAD](fill=0)
                for d in range(HEAD):
                    var part = SIMD[DType.float32, W](0)
                    for i in range(n_rows):
                        part[i] = first[i * state + d]
                    q[d] = part * scale
                attend_lanes[keys_transposed=True](
                    q,
                    kp + (audio * n_head + head) * HEAD * n_key,
                    n_key,
                    vp + (audio * n_head + head) * n_key * HEAD,
                    HEAD,
                    n_key,
                    yp + (audio * n_query + i0) * state + head * HEAD,
                    state,
                    n_rows,
                )

            sync_parallelize(lanes_task, n_audio * n_head * blocks)
            return

        def task(t: Int) {
            imm qp, imm kp, imm vp, imm yp, imm n_query, imm n_head, imm n_key, imm state, imm row_blocks, imm scale
        }:
            var block = t % row_blocks
            var head = (t // row_blocks) % n_head
            var audio = t // (row_blocks * n_head)
            var r0 = block * ROWS
            var rows = min(ROWS, n_query - r0)
            var keys = kp + (audio * n_head + head) * HEAD * n_key  # (64, N)
            var values = vp + (audio * n_head + head) * n_key * HEAD  # (N, 64)
            # the rows' queries, already scaled; a partial block (a burst's 17 rows end in a block of 2)
            # leaves the rows past its last one out of every step below
            var query = Array[Float32, ROWS * HEAD](fill=0)
            comptime for r in range(ROWS):
                if r < rows:
                    var src = qp + (audio * n_query + r0 + r) * state + head * HEAD
                    for d in range(HEAD):
                        query[r * HEAD + d] = src[d] * scale
            # the chunk's scores (then probabilities), W keys to a vector; keys past the last are -FLOOR
            var scores = Array[SIMD[DType.float32, W], ROWS * VECTORS](fill=0)
            var out = Array[SIMD[DType.float32, W], ROWS * GROUPS](fill=0)
            var running_max = Array[Float32, ROWS](fill=-FLOOR)
            var running_sum = Array[Float32, ROWS](fill=0)
            var j0 = 0
            while j0 < n_key:
                var width = min(CHUNK, n_key - j0)
                var n_vectors = ceildiv(width, W)
                for cv in range(n_vectors):
                    var c = cv * W
                    if c + W <= width:  # W keys: the rows' sums in registers
                        var acc = Array[SIMD[DType.float32, W], ROWS](fill=0)
                        var ahead = j0 + CHUNK + c < n_key
                        for d in range(HEAD):
                            # the same keys of the next chunk: 64 rows of the transposed keys, too far
                            # apart for the hardware's prefetcher to follow them all
                            if ahead:
                                prefetch[PrefetchOptions().for_read().high_locality().to_data_cache()](
                                    keys + d * n_key + j0 + CHUNK + c
                                )
                            var k = (keys + d * n_key + j0 + c).load[width=W]()
                            comptime for r in range(ROWS):
                                if r < rows:
                                    acc[r] = SIMD[DType.float32, W](query[r * HEAD + d]).fma(k, acc[r])
                        comptime for r in range(ROWS):
                            scores[r * VECTORS + cv] = acc[r]
                    else:  # the last few keys
                        comptime for r in range(ROWS):
                            if r < rows:
                                var part = SIMD[DType.float32, W](-FLOOR)
                                for i in range(width - c):
                                    var s: Float32 = 0
                                    for d in range(HEAD):
                                        s += query[r * HEAD + d] * keys[d * n_key + j0 + c + i]
                                    part[i] = s
                                scores[r * VECTORS + cv] = part
                # the running softmax: probabilities of the chunk against the new maximum
                comptime for r in range(ROWS):
                    if r >= rows:
                        continue
                    var top = running_max[r]
                    for cv in range(n_vectors):
                        top = max(top, scores[r * VECTORS + cv].reduce_max())
                    var factor = exp(running_max[r] - top)
                    var total = SIMD[DType.float32, W](0)
                    for cv in range(n_vectors):
                        var p = exp(scores[r * VECTORS + cv] - top)
                        scores[r * VECTORS + cv] = p
                        total += p
                    running_max[r] = top
                    running_sum[r] = running_sum[r] * factor + total.reduce_add()
                    comptime for g in range(GROUPS):
                        out[r * GROUPS + g] = out[r * GROUPS + g] * factor
                # the chunk's values, weighted by the probabilities: each value row read once for all rows
                for cv in range(n_vectors):
                    var first = values + (j0 + cv * W) * HEAD
                    for i in range(min(W, width - cv * W)):
                        var row = first + i * HEAD
                        var value = Array[SIMD[DType.float32, W], GROUPS](fill=0)
                        comptime for g in range(GROUPS):
                            value[g] = (row + g * W).load[width=W]()
                        comptime for r in range(ROWS):
                            if r < rows:
                                var p = SIMD[DType.float32, W](scores[r * VECTORS + cv][i])
                                comptime for g in range(GROUPS):
                                    out[r * GROUPS + g] = p.fma(value[g], out[r * GROUPS + g])
                j0 += CHUNK
            comptime for r in range(ROWS):
                if r < rows:
                    var dst = yp + (audio * n_query + r0 + r) * state + head * HEAD
                    var inverse = SIMD[DType.float32, W](1.0 / running_sum[r])
                    comptime for g in range(GROUPS):
                        (dst + g * W).store(out[r * GROUPS + g] * inverse)

        sync_parallelize(task, n_audio * n_head * row_blocks)

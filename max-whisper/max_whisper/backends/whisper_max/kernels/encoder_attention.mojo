"""The encoder's self-attention on MAX's CPU: every audio frame's query against every frame's key.

At 1500 x 1500 per head, MAX 26.7's path (a batched matmul for the scores, a softmax, a batched matmul
for the values) writes the 54 MB of scores of six heads to memory and reads them back twice, and its
scores product, only 64 deep, runs well below the matmul rate (docs/performance.md, entry 44). This op
keeps a chunk of scores in the L1 cache instead, with the queries across the vector lanes: one vector
holds W queries' values of one head dimension (the queries come in transposed, so each is one load),
each key's 64 values are broadcast from the key's own row (a sequential stream), and the softmax's
maximum and sums are taken lane by lane. A running softmax over chunks of keys (a running maximum and
sum, the output rescaled when the maximum grows) adds each chunk's values while they are in cache.
Every product and sum is float32.
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import ceildiv, exp, sqrt
from std.sys import simd_width_of

comptime HEAD = 64
"""The head width this kernel is written for (every Whisper model's)."""
comptime W = simd_width_of[DType.float32]()
"""float32 lanes per vector: the CPU's own width (16 with AVX-512, 8 with AVX2), the queries a work item
takes."""
comptime CHUNK = 256
"""Keys per chunk of the running softmax: the chunk's scores, one vector a key, stay in the L1 cache."""
comptime KEYS = 16
"""Keys scored at once, one accumulator vector each (then 16 head dimensions at once for the values)."""
comptime FLOOR = Float32(3.0e38)
"""Below every score: the running maximum's start."""


@extensibility.register("encoder_attention")
struct EncoderAttention:
    """``y = softmax(q k^T / sqrt(64)) v`` per head, for queries held transposed q_t (B, H, 64, N), keys
    k (B, H, N_keys, 64) and values v (B, H, N_keys, 64); y (B, N, H * 64) with the heads side by side,
    as whisper merges them. No mask: every query attends over every key (the encoder's attention)."""

    @staticmethod
    def execute[
        target: StaticString,
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        q_t: InputTensor[dtype=DType.float32, rank=4, ...],
        k: InputTensor[dtype=DType.float32, rank=4, ...],
        v: InputTensor[dtype=DType.float32, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        var n_batch = q_t.dim_size(0)
        var n_head = q_t.dim_size(1)
        var n_query = q_t.dim_size(3)
        var n_key = k.dim_size(2)
        if q_t.dim_size(2) != HEAD or k.dim_size(3) != HEAD or v.dim_size(3) != HEAD:
            raise Error("encoder_attention: the heads must be 64 wide")
        if v.dim_size(2) != n_key or y.dim_size(1) != n_query or y.dim_size(2) != n_head * HEAD:
            raise Error("encoder_attention: a value per key, a row of y per query")
        var qp = q_t.unsafe_ptr()
        var kp = k.unsafe_ptr()
        var vp = v.unsafe_ptr()
        var yp = y.unsafe_ptr()
        var state = n_head * HEAD
        var blocks = ceildiv(n_query, W)
        var scale = Float32(1.0 / sqrt(Float64(HEAD)))

        def task(t: Int) {
            imm qp, imm kp, imm vp, imm yp, imm n_query, imm n_head, imm n_key, imm state, imm blocks, imm scale
        }:
            var block = t % blocks
            var head = (t // blocks) % n_head
            var batch = t // (blocks * n_head)
            var i0 = block * W
            var n_rows = min(W, n_query - i0)  # the last block may hold fewer queries: its other lanes are 0
            var queries = qp + (batch * n_head + head) * HEAD * n_query  # (64, N)
            var keys = kp + (batch * n_head + head) * n_key * HEAD  # (N_keys, 64)
            var values = vp + (batch * n_head + head) * n_key * HEAD  # (N_keys, 64)
            # q[d]: dimension d of the block's queries, one lane a query, already scaled
            var q = Array[SIMD[DType.float32, W], HEAD](fill=0)
            for d in range(HEAD):
                if n_rows == W:
                    q[d] = (queries + d * n_query + i0).load[width=W]() * scale
                else:
                    var part = SIMD[DType.float32, W](0)
                    for i in range(n_rows):
                        part[i] = queries[d * n_query + i0 + i] * scale
                    q[d] = part
            # scores[j]: key j of the chunk against every query of the block (then its probabilities)
            var scores = Array[SIMD[DType.float32, W], CHUNK](fill=0)
            # out[d]: dimension d of the block's outputs, one lane a query, before the softmax's division
            var out = Array[SIMD[DType.float32, W], HEAD](fill=0)
            var top = SIMD[DType.float32, W](-FLOOR)
            var total = SIMD[DType.float32, W](0)
            var j0 = 0
            while j0 < n_key:
                var width = min(CHUNK, n_key - j0)
                var j = 0
                while j + KEYS <= width:  # KEYS keys in KEYS accumulators
                    var acc = Array[SIMD[DType.float32, W], KEYS](fill=0)
                    var rows = keys + (j0 + j) * HEAD
                    for d in range(HEAD):
                        var qd = q[d]
                        comptime for key in range(KEYS):
                            acc[key] = SIMD[DType.float32, W](rows[key * HEAD + d]).fma(qd, acc[key])
                    comptime for key in range(KEYS):
                        scores[j + key] = acc[key]
                    j += KEYS
                while j < width:  # the last few keys, one at a time
                    var acc = SIMD[DType.float32, W](0)
                    var row = keys + (j0 + j) * HEAD
                    for d in range(HEAD):
                        acc = SIMD[DType.float32, W](row[d]).fma(q[d], acc)
                    scores[j] = acc
                    j += 1
                # the running softmax, lane by lane: the chunk's probabilities against the new maximum
                var new_top = top
                for i in range(width):
                    new_top = max(new_top, scores[i])
                var factor = exp(top - new_top)
                top = new_top
                var sum = SIMD[DType.float32, W](0)
                for i in range(width):
                    var p = exp(scores[i] - new_top)
                    scores[i] = p
                    sum += p
                total = total * factor + sum
                # the chunk's values, KEYS head dimensions at a time in KEYS accumulators
                comptime for g in range(HEAD // KEYS):
                    var acc = Array[SIMD[DType.float32, W], KEYS](fill=0)
                    comptime for dd in range(KEYS):
                        acc[dd] = out[g * KEYS + dd] * factor
                    for i in range(width):
                        var p = scores[i]
                        var row = values + (j0 + i) * HEAD + g * KEYS
                        comptime for dd in range(KEYS):
                            acc[dd] = SIMD[DType.float32, W](row[dd]).fma(p, acc[dd])
                    comptime for dd in range(KEYS):
                        out[g * KEYS + dd] = acc[dd]
                j0 += CHUNK
            var inverse = 1.0 / total
            for d in range(HEAD):
                var o = out[d] * inverse
                for i in range(n_rows):
                    yp[(batch * n_query + i0 + i) * state + head * HEAD + d] = o[i]

        sync_parallelize(task, n_batch * n_head * blocks)

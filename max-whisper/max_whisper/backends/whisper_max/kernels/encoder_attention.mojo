"""The encoder's self-attention on MAX's CPU: every audio frame's query against every frame's key.

At 1500 x 1500 per head, MAX 26.7's path (a batched matmul for the scores, a softmax, a batched matmul
for the values) writes the 54 MB of scores of six heads to memory and reads them back twice, and its
scores product, only 64 deep, runs well below the matmul rate (docs/performance.md, entry 44). This op
runs ``lanes_attention.attend_lanes`` instead, which keeps a chunk of scores in the L1 cache, on blocks
of W queries (the queries come in transposed, so a block's values of one head dimension are one load)
against the keys' own rows (a sequential stream).
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import ceildiv, sqrt

from .lanes_attention import HEAD, W, attend_lanes


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
            attend_lanes[keys_transposed=False](
                q, keys, values, n_key, yp + (batch * n_query + i0) * state + head * HEAD, state, n_rows
            )

        sync_parallelize(task, n_batch * n_head * blocks)

"""The encoder's self-attention on MAX's CPU: every audio frame's query against every frame's key.

At 1500 x 1500 per head, MAX 26.7's path (a batched matmul for the scores, a softmax, a batched matmul
for the values) writes the 54 MB of scores of six heads to memory and reads them back twice, and its
scores product, only 64 deep, runs well below the matmul rate (docs/performance.md, entry 44). This op
runs ``lanes_attention.attend_lanes`` instead, which keeps a chunk of scores in the L1 cache, on blocks
of W queries (a block's values of one head dimension are gathered into one vector) against the keys'
own rows. It reads the projections where they lie, a head's 64 columns of each row, so the graph
splits no heads out of them (3 copies of the activations a layer; entry 47).
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import ceildiv, sqrt

from .lanes_attention import HEAD, W, attend_lanes


@extensibility.register("encoder_attention")
struct EncoderAttention:
    """``y = softmax(q k^T / sqrt(64)) v`` per head, for queries q (B, N, H * 64), keys k (B, N_keys, H * 64)
    and values v (B, N_keys, H * 64), each head 64 adjacent columns (the projections as whisper makes
    them); y (B, N, H * 64) with the heads side by side, as whisper merges them. No mask: every query
    attends over every key (the encoder's attention)."""

    @staticmethod
    def execute[
        target: StaticString,
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        k: InputTensor[dtype=DType.float32, rank=3, ...],
        v: InputTensor[dtype=DType.float32, rank=3, ...],
        ctx: DeviceContext,
    ) raises:
        var n_batch = q.dim_size(0)
        var n_query = q.dim_size(1)
        var n_key = k.dim_size(1)
        var state = q.dim_size(2)
        var n_head = state // HEAD
        if state % HEAD != 0 or k.dim_size(2) != state or v.dim_size(2) != state:
            raise Error("encoder_attention: 64-wide heads side by side in q, k and v")
        if v.dim_size(1) != n_key or y.dim_size(1) != n_query or y.dim_size(2) != state:
            raise Error("encoder_attention: a value per key, a row of y per query")
        var qp = q.unsafe_ptr()
        var kp = k.unsafe_ptr()
        var vp = v.unsafe_ptr()
        var yp = y.unsafe_ptr()
        var blocks = ceildiv(n_query, W)
        var scale = Float32(1.0 / sqrt(Float64(HEAD)))

        def task(t: Int) {
            imm qp, imm kp, imm vp, imm yp, imm n_query, imm n_key, imm n_head, imm state, imm blocks, imm scale
        }:
            var block = t % blocks
            var head = (t // blocks) % n_head
            var batch = t // (blocks * n_head)
            var i0 = block * W
            var n_rows = min(W, n_query - i0)  # the last block may hold fewer queries: its other lanes are 0
            var queries = qp + (batch * n_query + i0) * state + head * HEAD  # the block's first query
            # q[d]: dimension d of the block's queries, one lane a query, already scaled
            var q_t = Array[SIMD[DType.float32, W], HEAD](fill=0)
            for d in range(HEAD):
                var part = SIMD[DType.float32, W](0)
                for i in range(n_rows):
                    part[i] = queries[i * state + d]
                q_t[d] = part * scale
            var head_rows = (batch * n_key) * state + head * HEAD  # the head's columns of key and value 0
            var out = yp + (batch * n_query + i0) * state + head * HEAD
            attend_lanes[keys_transposed=False](q_t, kp + head_rows, state, vp + head_rows, state, n_key, out, state, n_rows)

        sync_parallelize(task, n_batch * n_head * blocks)

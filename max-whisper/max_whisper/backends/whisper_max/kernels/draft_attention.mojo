"""Attention of the draft decoder's one new token on MAX's CPU: over the self-attention cache and over
the audio's bfloat16 keys and values.

A draft step feeds one token through the 4-bit blocks to guess the next. Its attention reads little
(a few hundred cached positions, the audio's 1500 keys in bfloat16), and written as MAX ops each
attention is about a dozen of them (a cast, a product, a sum, a softmax, reshapes and, over the
cache, the stores, loads and slices of its buffers): a step costs more in dispatching its ops than in
what it reads (docs/performance.md, entries 43 and 44). Here each attention is one op, one work item
per head. Every product and sum is float32.
"""

import extensibility
from extensibility import InputTensor, OutputTensor, _MutableInputTensor as MutableInputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import ceildiv, exp, sqrt

from .lanes_attention import FLOOR, HEAD, W

comptime MAX_CTX = 448
"""The most cache positions the draft attends over (every Whisper model's text context)."""
comptime MAX_AUDIO = 1500
"""The most audio positions (every Whisper model's 30-s window)."""
comptime GROUPS = HEAD // W
"""Vectors per row of a head."""


@always_inline
def attend_one_row[
    key_type: DType, value_type: DType, scratch: MutOrigin, output: MutOrigin
](
    query: UnsafePointer[Float32, _],
    key_rows: UnsafePointer[Scalar[key_type], _],
    value_rows: UnsafePointer[Scalar[value_type], _],
    value_stride: Int,
    n_key: Int,
    scores: UnsafePointer[Float32, scratch],
    result: UnsafePointer[Float32, output],
):
    """One head of ``softmax(q k^T / sqrt(64) + mask) v`` for one query row: ``query`` (64,), ``key_rows``
    (n_key, 64) and ``value_rows`` held transposed (64, value_stride), of which the first n_key
    columns are read; ``scores`` is scratch for ceil(n_key / W) * W values that holds on entry each
    key's additive mask (zeros: none); the 64 outputs go to ``result``."""
    var scale = Float32(1.0 / sqrt(Float64(HEAD)))
    var q = Array[SIMD[DType.float32, W], GROUPS](fill=0)
    comptime for g in range(GROUPS):
        q[g] = (query + g * W).load[width=W]() * scale
    for j in range(n_key):
        var key = key_rows + j * HEAD
        var acc = q[0] * key.load[width=W]().cast[DType.float32]()
        comptime for g in range(1, GROUPS):
            acc = q[g].fma((key + g * W).load[width=W]().cast[DType.float32](), acc)
        scores[j] = scores[j] + acc.reduce_add()
    # the softmax a vector at a time; padding positions score -FLOOR, so they weigh 0
    var n_padded = ceildiv(n_key, W) * W
    for j in range(n_key, n_padded):
        scores[j] = -FLOOR
    var top = SIMD[DType.float32, W](-FLOOR)
    for j in range(0, n_padded, W):
        top = max(top, (scores + j).load[width=W]())
    var top_all = top.reduce_max()
    var total = SIMD[DType.float32, W](0)
    for j in range(0, n_padded, W):
        var p = exp((scores + j).load[width=W]() - top_all)
        (scores + j).store(p)
        total += p
    var inverse = 1.0 / total.reduce_add()
    # the weighted values: one transposed value row (a dimension of the head) at a time
    var n_full = (n_key // W) * W
    for d in range(HEAD):
        var value = value_rows + d * value_stride
        var acc = SIMD[DType.float32, W](0)
        var j = 0
        while j < n_full:
            acc = (scores + j).load[width=W]().fma((value + j).load[width=W]().cast[DType.float32](), acc)
            j += W
        var sum = acc.reduce_add()
        for i in range(n_full, n_key):
            sum += scores[i] * value[i].cast[DType.float32]()
        result[d] = sum * inverse


@extensibility.register("draft_self_attention")
struct DraftSelfAttention:
    """The new token's query, key and value side by side in qkv (B, 1, 3 * H * 64): the key and value
    go into the cache buffers at ``position`` (a (1,) int64 tensor), keys (B, H, ctx, 64) and values
    held transposed (B, H, 64, ctx), the layouts of ``layers.KVCache``; then the query attends over
    positions [0, position]. y (B, 1, H * 64), the heads side by side as whisper merges them."""

    @staticmethod
    def execute[
        target: StaticString,
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        qkv: InputTensor[dtype=DType.float32, rank=3, ...],
        position: InputTensor[dtype=DType.int64, rank=1, ...],
        keys: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        values_t: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        var n_batch = qkv.dim_size(0)
        var n_head = keys.dim_size(1)
        var n_ctx = keys.dim_size(2)
        var at = Int(position.unsafe_ptr()[0])
        if qkv.dim_size(1) != 1 or keys.dim_size(3) != HEAD or values_t.dim_size(2) != HEAD:
            raise Error("draft_self_attention: one new token per row, 64-wide heads")
        if qkv.dim_size(2) != 3 * n_head * HEAD or y.dim_size(2) != n_head * HEAD:
            raise Error("draft_self_attention: a query, key and value per head")
        if n_ctx > MAX_CTX or at < 0 or at >= n_ctx:
            raise Error("draft_self_attention: the position must lie in a cache of at most 448")
        var qkv_p = qkv.unsafe_ptr()
        var cache_keys = keys.unsafe_ptr()
        var cache_values = values_t.unsafe_ptr()
        var yp = y.unsafe_ptr()
        var state = n_head * HEAD

        def task(t: Int) {imm qkv_p, imm cache_keys, imm cache_values, imm yp, imm n_head, imm n_ctx, imm at, imm state}:
            var head = t % n_head
            var row = t // n_head
            var key_rows = cache_keys + (row * n_head + head) * n_ctx * HEAD
            var value_rows = cache_values + (row * n_head + head) * HEAD * n_ctx
            var own = row * state + head * HEAD  # this head's 64 values in y
            var query = qkv_p + 3 * row * state + head * HEAD  # and in qkv: its query, key, value
            comptime for g in range(GROUPS):
                (key_rows + at * HEAD + g * W).store((query + state + g * W).load[width=W]())
            for d in range(HEAD):
                value_rows[d * n_ctx + at] = query[2 * state + d]
            var scores = Array[Float32, MAX_CTX](fill=0)
            attend_one_row(query, key_rows, value_rows, n_ctx, at + 1, scores.unsafe_ptr(), yp + own)

        sync_parallelize(task, n_batch * n_head)


@extensibility.register("draft_cross_attention")
struct DraftCrossAttention:
    """The new token's query q (B, 1, H * 64) over the audio's keys (B, H, N, 64) and values held
    transposed (B, H, 64, N), bfloat16: the draft's layouts of the cross K/V. y (B, 1, H * 64)."""

    @staticmethod
    def execute[
        target: StaticString,
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        keys: InputTensor[dtype=DType.bfloat16, rank=4, ...],
        values_t: InputTensor[dtype=DType.bfloat16, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        var n_batch = q.dim_size(0)
        var n_head = keys.dim_size(1)
        var n_key = keys.dim_size(2)
        if q.dim_size(1) != 1 or keys.dim_size(3) != HEAD or values_t.dim_size(2) != HEAD:
            raise Error("draft_cross_attention: one new token per row, 64-wide heads")
        if n_key > MAX_AUDIO or values_t.dim_size(3) != n_key:
            raise Error("draft_cross_attention: at most 1500 audio positions, as many values as keys")
        var qp = q.unsafe_ptr()
        var kp = keys.unsafe_ptr()
        var vp = values_t.unsafe_ptr()
        var yp = y.unsafe_ptr()
        var state = n_head * HEAD

        def task(t: Int) {imm qp, imm kp, imm vp, imm yp, imm n_head, imm n_key, imm state}:
            var head = t % n_head
            var row = t // n_head
            var own = row * state + head * HEAD
            var scores = Array[Float32, MAX_AUDIO + W](fill=0)
            attend_one_row(
                qp + own,
                kp + (row * n_head + head) * n_key * HEAD,
                vp + (row * n_head + head) * HEAD * n_key,
                n_key,
                n_key,
                scores.unsafe_ptr(),
                yp + own,
            )

        sync_parallelize(task, n_batch * n_head)

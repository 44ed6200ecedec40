"""Attention of W queries at once, one query a vector lane: the block that both CPU attention ops run
for many queries (the encoder's self-attention, and a decoder prompt's cross-attention).

One vector holds W queries' values of one head dimension, so a key's score against all W queries is 64
multiply-adds of that vector by the key's values, each broadcast from memory; the softmax's maximum and
sums are taken lane by lane. KEYS keys are scored at once in KEYS accumulators. A running softmax over
chunks of CHUNK keys (a running maximum and sum, the output rescaled when the maximum grows) adds each
chunk's values while its scores are in the L1 cache, so no score is written to memory. Every product and
sum is float32.

The keys come as rows, the encoder's, or transposed (64, N_keys), the decoder's cross-attention keys; the
values always as rows. Rows lie ``stride`` floats apart: 64 for a head's own array (N_keys, 64), the model's
width for a head's columns of the projections (N_keys, H * 64) themselves.
"""

from std.math import exp
from std.sys import simd_width_of

comptime HEAD = 64
"""The head width the attention kernels are written for (every Whisper model's)."""
comptime W = simd_width_of[DType.float32]()
"""float32 lanes per vector: the CPU's own width (16 with AVX-512, 8 with AVX2), the queries of a block."""
comptime CHUNK = 256
"""Keys per chunk of the running softmax: the chunk's scores, one vector a key, stay in the L1 cache."""
comptime KEYS = 16
"""Keys scored at once, one accumulator vector each (then 16 head dimensions at once for the values)."""
comptime FLOOR = Float32(3.0e38)
"""Below every score: a running maximum's start, and the score of a padding position past the last key."""


@always_inline
def key_at[keys_transposed: Bool](keys: UnsafePointer[Float32, _], stride: Int, j: Int, d: Int) -> Float32:
    """Dimension ``d`` of key ``j``, from rows ``stride`` apart or from the transposed keys (64, stride)."""
    comptime if keys_transposed:
        return keys[d * stride + j]
    else:
        return keys[j * stride + d]


@always_inline
def attend_lanes[keys_transposed: Bool, output: MutOrigin](
    q: Array[SIMD[DType.float32, W], HEAD],
    keys: UnsafePointer[Float32, _],
    key_stride: Int,
    values: UnsafePointer[Float32, _],
    value_stride: Int,
    n_key: Int,
    y: UnsafePointer[Float32, output],
    y_stride: Int,
    n_rows: Int,
):
    """``softmax(q k^T) v`` for the block's queries ``q`` (q[d]: dimension d, one lane a query, already
    scaled by 1/sqrt(64)) over ``n_key`` keys and values of one head: key rows ``key_stride`` apart (the
    transposed keys: ``key_stride`` keys a dimension), value rows ``value_stride`` apart. Lane ``i < n_rows``
    is written to ``y[i * y_stride : i * y_stride + 64]``; the other lanes are not written."""
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
            for d in range(HEAD):
                var qd = q[d]
                comptime for key in range(KEYS):
                    var k = key_at[keys_transposed](keys, key_stride, j0 + j + key, d)
                    acc[key] = SIMD[DType.float32, W](k).fma(qd, acc[key])
            comptime for key in range(KEYS):
                scores[j + key] = acc[key]
            j += KEYS
        while j < width:  # the last few keys, one at a time
            var acc = SIMD[DType.float32, W](0)
            for d in range(HEAD):
                acc = SIMD[DType.float32, W](key_at[keys_transposed](keys, key_stride, j0 + j, d)).fma(q[d], acc)
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
                var row = values + (j0 + i) * value_stride + g * KEYS
                comptime for dd in range(KEYS):
                    acc[dd] = SIMD[DType.float32, W](row[dd]).fma(p, acc[dd])
            comptime for dd in range(KEYS):
                out[g * KEYS + dd] = acc[dd]
        j0 += CHUNK
    var inverse = 1.0 / total
    for d in range(HEAD):
        var o = out[d] * inverse
        for i in range(n_rows):
            y[i * y_stride + d] = o[i]

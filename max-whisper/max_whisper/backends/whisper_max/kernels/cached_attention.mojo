"""The float32 decoder's self-attention on MAX's CPU: a pass's new tokens over the cache, read in place.

A decoder pass (a prompt's up to 225 tokens, a burst's 17, a beam step's one token in each of 5 rows)
writes its new keys and values into the cache buffers and attends over every held position. Written as
MAX ops, that loads each cache buffer whole (a copy of the buffer, 0.7 MB a row and block), slices and
transposes it, and runs two batched matmuls, a mask and a softmax (docs/performance.md, entries 32, 35
and 45). Here it is one op: the new keys and values are stored, then each new token of each row and
head attends over the cache in place (``draft_attention.attend_one_row``), one work item per row and
head. Every product and sum is float32.
"""

import extensibility
from extensibility import InputTensor, OutputTensor, _MutableInputTensor as MutableInputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext

from .draft_attention import GROUPS, MAX_CTX, attend_one_row
from .lanes_attention import FLOOR, HEAD, W


@extensibility.register("cached_attention")
struct CachedAttention:
    """q, k and v (B, n_new, H * 64): the new tokens' query, key and value projections. The keys and
    values go into the cache buffers at positions [start, start + n_new) (``start`` a (1,) int64 tensor),
    keys (B, H, ctx, 64) and values held transposed (B, H, 64, ctx), the layouts of ``layers.KVCache``;
    then each new token's query attends over positions [0, start + n_new) under the additive ``mask``
    (n_new, start + n_new), whisper's causal mask. y (B, n_new, H * 64), the heads side by side as whisper
    merges them."""

    @staticmethod
    def execute[
        target: StaticString,
    ](
        y: OutputTensor[dtype=DType.float32, rank=3, ...],
        q: InputTensor[dtype=DType.float32, rank=3, ...],
        k: InputTensor[dtype=DType.float32, rank=3, ...],
        v: InputTensor[dtype=DType.float32, rank=3, ...],
        start: InputTensor[dtype=DType.int64, rank=1, ...],
        mask: InputTensor[dtype=DType.float32, rank=2, ...],
        keys: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        values_t: MutableInputTensor[dtype=DType.float32, rank=4, ...],
        ctx: DeviceContext,
    ) raises:
        var n_batch = q.dim_size(0)
        var n_new = q.dim_size(1)
        var n_head = keys.dim_size(1)
        var n_ctx = keys.dim_size(2)
        var state = n_head * HEAD
        var first = Int(start.unsafe_ptr()[0])
        var n_total = first + n_new
        if keys.dim_size(3) != HEAD or values_t.dim_size(2) != HEAD or values_t.dim_size(3) != n_ctx:
            raise Error("cached_attention: 64-wide heads, keys (B, H, ctx, 64) and values (B, H, 64, ctx)")
        if q.dim_size(2) != state or k.dim_size(2) != state or v.dim_size(2) != state:
            raise Error("cached_attention: a query, key and value per head")
        if k.dim_size(1) != n_new or v.dim_size(1) != n_new or keys.dim_size(0) != n_batch:
            raise Error("cached_attention: a key and value per new token, a cache row per row")
        if n_ctx > MAX_CTX or first < 0 or n_total > n_ctx:
            raise Error("cached_attention: the new tokens must lie in a cache of at most 448 positions")
        if mask.dim_size(0) != n_new or mask.dim_size(1) != n_total:
            raise Error("cached_attention: a mask row per new token, a column per held position")
        var qp = q.unsafe_ptr()
        var kp = k.unsafe_ptr()
        var vp = v.unsafe_ptr()
        var mp = mask.unsafe_ptr()
        var cache_keys = keys.unsafe_ptr()
        var cache_values = values_t.unsafe_ptr()
        var yp = y.unsafe_ptr()

        def task(t: Int) {
            imm qp, imm kp, imm vp, imm mp, imm cache_keys, imm cache_values, imm yp, imm n_new, imm n_head,
            imm n_ctx, imm state, imm first, imm n_total
        }:
            var head = t % n_head
            var row = t // n_head
            var key_rows = cache_keys + (row * n_head + head) * n_ctx * HEAD
            var value_rows = cache_values + (row * n_head + head) * HEAD * n_ctx
            for i in range(n_new):  # the new keys and values into the cache
                var own = (row * n_new + i) * state + head * HEAD
                comptime for g in range(GROUPS):
                    (key_rows + (first + i) * HEAD + g * W).store((kp + own + g * W).load[width=W]())
                for d in range(HEAD):
                    value_rows[d * n_ctx + first + i] = vp[own + d]
            var scores = Array[Float32, MAX_CTX](fill=0)
            for i in range(n_new):
                var mask_row = mp + i * n_total
                # the positions after the last one the mask lets through weigh exactly 0: not read (a
                # prompt's token i attends over start + i + 1 positions, not all of the prompt's)
                var n_key = n_total
                while n_key > 1 and mask_row[n_key - 1] < -FLOOR:
                    n_key -= 1
                for j in range(n_key):
                    scores[j] = mask_row[j]
                var own = (row * n_new + i) * state + head * HEAD
                attend_one_row(qp + own, key_rows, value_rows, n_ctx, n_key, scores.unsafe_ptr(), yp + own)

        sync_parallelize(task, n_batch * n_head)

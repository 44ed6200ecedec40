"""whisper's greedy choice of the next token from a row of logits, as one op on MAX's CPU.

``choice.greedy_choice`` says what is chosen, as MAX ops: the logits plus a suppress row of 0 or -inf,
a few masked token ranges per row, whisper's timestamp rule (a timestamp when the timestamps' total
probability beats every text token), then the first maximum and its log-probability. Those ops run
one after another over every row, each writing its result to memory (docs/performance.md, entry 47
has the times). Here each row is one work item, and its passes read the
logits row where it lies, the masked ranges skipped instead of written: a pass for the maxima of the
text and of the timestamps, one for the sums of exponentials, one for the first index of the maximum.
Every sum is float32.
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.algorithm import sync_parallelize
from max.gpu.host import DeviceContext
from std.math import exp, log
from std.sys import simd_width_of

comptime W = simd_width_of[DType.float32]()
"""float32 lanes per vector: the CPU's own width (16 with AVX-512, 8 with AVX2)."""
comptime FLOOR = Float32(-3.0e38)
"""Below every finite logit: a maximum's start, and the maximum of a span whose logits are all -inf."""
comptime MAX_RANGES = 4
"""The most masked ranges a row may have (whisper's timestamp rules need two)."""


@always_inline
def span_max(x: UnsafePointer[Float32, _], s: UnsafePointer[Float32, _], lo: Int, hi: Int, top: Float32) -> Float32:
    """The largest of ``top`` and of ``x[i] + s[i]`` for i in [lo, hi)."""
    var v = SIMD[DType.float32, W](top)
    var j = lo
    while j + W <= hi:
        v = max(v, (x + j).load[width=W]() + (s + j).load[width=W]())
        j += W
    var best = v.reduce_max()
    for i in range(j, hi):
        best = max(best, x[i] + s[i])
    return best


@always_inline
def span_sum_exp(x: UnsafePointer[Float32, _], s: UnsafePointer[Float32, _], lo: Int, hi: Int, top: Float32) -> Float32:
    """The sum of ``exp(x[i] + s[i] - top)`` for i in [lo, hi) (a suppressed logit, -inf, adds 0)."""
    var acc = SIMD[DType.float32, W](0)
    var j = lo
    while j + W <= hi:
        acc += exp((x + j).load[width=W]() + (s + j).load[width=W]() - top)
        j += W
    var total = acc.reduce_add()
    for i in range(j, hi):
        total += exp(x[i] + s[i] - top)
    return total


@always_inline
def span_first(x: UnsafePointer[Float32, _], s: UnsafePointer[Float32, _], lo: Int, hi: Int, value: Float32) -> Int:
    """The first i in [lo, hi) with ``x[i] + s[i] == value``, or -1."""
    var j = lo
    while j + W <= hi:
        if ((x + j).load[width=W]() + (s + j).load[width=W]()).eq(value).reduce_or():
            break
        j += W
    for i in range(j, hi):
        if x[i] + s[i] == value:
            return i
    return -1


@extensibility.register("greedy_choice")
struct GreedyChoice:
    """For each row of ``logits`` (B, R, n_vocab): ``token`` (B * R,), whisper's greedy choice, and ``logprob``
    (B * R,), its log-probability, under ``suppress`` (n_vocab,) of 0 or -inf, the row's masked token
    ranges [lo, hi) in ``ranges`` (B * R, n_ranges, 2) (an empty one, such as [0, 0), masks nothing), and
    ``rule`` (1,): 1 where whisper's timestamp rule applies. Tokens from ``timestamp_begin`` on are
    timestamps."""

    @staticmethod
    def execute[
        target: StaticString,
        timestamp_begin: Int,
    ](
        token: OutputTensor[dtype=DType.int64, rank=1, ...],
        logprob: OutputTensor[dtype=DType.float32, rank=1, ...],
        logits: InputTensor[dtype=DType.float32, rank=3, ...],
        suppress: InputTensor[dtype=DType.float32, rank=1, ...],
        ranges: InputTensor[dtype=DType.int64, rank=3, ...],
        rule: InputTensor[dtype=DType.int64, rank=1, ...],
        ctx: DeviceContext,
    ) raises:
        var n_rows = logits.dim_size(0) * logits.dim_size(1)
        var n_vocab = logits.dim_size(2)
        var n_ranges = ranges.dim_size(1)
        if suppress.dim_size(0) != n_vocab or ranges.dim_size(0) != n_rows or ranges.dim_size(2) != 2:
            raise Error("greedy_choice: a suppress value per token and the masked ranges of each row")
        if n_ranges > MAX_RANGES or token.dim_size(0) != n_rows or logprob.dim_size(0) != n_rows:
            raise Error("greedy_choice: at most 4 masked ranges a row, a token and a log-probability a row")
        if timestamp_begin < 1 or timestamp_begin >= n_vocab:
            raise Error("greedy_choice: the timestamps must follow the text tokens")
        var xp = logits.unsafe_ptr()
        var sp = suppress.unsafe_ptr()
        var rp = ranges.unsafe_ptr()
        var tp = token.unsafe_ptr()
        var lp = logprob.unsafe_ptr()
        var timestamps = rule.unsafe_ptr()[0] == 1

        def task(row: Int) {imm xp, imm sp, imm rp, imm tp, imm lp, imm timestamps, imm n_vocab, imm n_ranges}:
            var x = xp + row * n_vocab
            # the unmasked spans of [0, n_vocab): the row's ranges, sorted by their start, then their gaps
            var starts = Array[Int, MAX_RANGES](fill=0)
            var ends = Array[Int, MAX_RANGES](fill=0)
            var n_masked = 0
            for k in range(n_ranges):
                var lo = max(Int(rp[(row * n_ranges + k) * 2]), 0)
                var hi = min(Int(rp[(row * n_ranges + k) * 2 + 1]), n_vocab)
                if lo >= hi:
                    continue
                var at = n_masked
                while at > 0 and starts[at - 1] > lo:
                    starts[at] = starts[at - 1]
                    ends[at] = ends[at - 1]
                    at -= 1
                starts[at] = lo
                ends[at] = hi
                n_masked += 1
            var span_lo = Array[Int, MAX_RANGES + 1](fill=0)
            var span_hi = Array[Int, MAX_RANGES + 1](fill=0)
            var n_spans = 0
            var done = 0  # tokens below this are in a span or masked
            for k in range(n_masked):
                if starts[k] > done:
                    span_lo[n_spans] = done
                    span_hi[n_spans] = starts[k]
                    n_spans += 1
                done = max(done, ends[k])
            if done < n_vocab:
                span_lo[n_spans] = done
                span_hi[n_spans] = n_vocab
                n_spans += 1

            # the maxima of the text tokens and of the timestamps, then the timestamps' sum of exponentials
            var top_text = FLOOR
            var top_time = FLOOR
            for k in range(n_spans):
                if span_lo[k] < timestamp_begin:
                    top_text = span_max(x, sp, span_lo[k], min(span_hi[k], timestamp_begin), top_text)
                if span_hi[k] > timestamp_begin:
                    top_time = span_max(x, sp, max(span_lo[k], timestamp_begin), span_hi[k], top_time)
            var sum_time = Float32(0)
            for k in range(n_spans):
                if span_hi[k] > timestamp_begin:
                    sum_time += span_sum_exp(x, sp, max(span_lo[k], timestamp_begin), span_hi[k], top_time)
            # ApplyTimestampRules: a timestamp where log(sum of the timestamps' probabilities) beats the best text
            # token's (both log-probabilities share the row's normaliser, which cancels)
            var pick_time = timestamps and top_time + log(sum_time) > top_text
            var top = top_time if pick_time else max(top_text, top_time)
            var first = timestamp_begin if pick_time else 0
            var total = sum_time
            if not pick_time:
                total = Float32(0)
                for k in range(n_spans):
                    total += span_sum_exp(x, sp, span_lo[k], span_hi[k], top)
            # GreedyDecoder at temperature 0: the first maximum, and its log_softmax, (top - top) - log(total)
            var chosen = -1
            for k in range(n_spans):
                if chosen < 0 and span_hi[k] > first:
                    chosen = span_first(x, sp, max(span_lo[k], first), span_hi[k], top)
            tp[row] = Int64(max(chosen, 0))
            lp[row] = -log(total)

        sync_parallelize(task, n_rows)

"""The draft decoder's guess from its 4-bit scores of the vocabulary, as one op on MAX's CPU.

``layers.TextDecoder.draft`` says what is chosen: whisper's timestamp rule between text and time (a
timestamp when the timestamps' total probability beats every text token), the two best text tokens
scored again against their float32 embedding rows, and the margin of the guess over the runner-up.
Written as MAX ops that is about thirty small ops a draft step, each dispatched on its own; here it is
three passes over a row of scores that stays in cache (docs/performance.md, entry 44).
"""

import extensibility
from extensibility import InputTensor, OutputTensor
from max.gpu.host import DeviceContext
from std.math import exp, log
from std.sys import simd_width_of

comptime W = simd_width_of[DType.float32]()
"""float32 lanes per vector: the CPU's own width (16 with AVX-512, 8 with AVX2)."""
comptime FLOOR = Float32(-1.0e30)
"""Below every score: what the runner-up search gives the best text tokens."""


@always_inline
def largest(row: UnsafePointer[Float32, _], lo: Int, hi: Int, below: Float32) -> Float32:
    """The largest of ``row[lo:hi]`` that is below ``below`` (FLOOR if none is)."""
    var top = SIMD[DType.float32, W](FLOOR)
    var j = lo
    while j + W <= hi:
        var v = (row + j).load[width=W]()
        top = max(top, v.lt(below).select(v, SIMD[DType.float32, W](FLOOR)))
        j += W
    var best = top.reduce_max()
    for i in range(j, hi):
        if row[i] < below and row[i] > best:
            best = row[i]
    return best


@always_inline
def first_index(row: UnsafePointer[Float32, _], lo: Int, hi: Int, value: Float32) -> Int:
    """The first i in [lo, hi) with ``row[i] == value`` (``lo`` if there is none)."""
    var j = lo
    while j + W <= hi:
        if (row + j).load[width=W]().eq(value).reduce_or():
            break
        j += W
    for i in range(j, hi):
        if row[i] == value:
            return i
    return lo


@always_inline
def exact_score(hidden: UnsafePointer[Float32, _], embedding_t: UnsafePointer[Float32, _], state: Int, n_vocab: Int, token: Int) -> Float32:
    """``hidden . embedding[token]`` against the float32 embedding, held transposed (state, n_vocab)."""
    var total = Float32(0)
    for d in range(state):
        total += hidden[d] * embedding_t[d * n_vocab + token]
    return total


@extensibility.register("draft_choice")
struct DraftChoice:
    """For each row of ``scores`` (B, R, >= n_vocab), the draft's 4-bit scores of the vocabulary, and its
    final-norm hidden state ``hidden`` (B, R, state): ``guess`` (B, R), the token whisper is guessed to
    pick next, and ``margin`` (B, R), how far (in logits) the guess is ahead of the runner-up.
    ``embedding_t`` (state, n_vocab) is the float32 token embedding, transposed. Tokens from
    ``timestamp_begin`` to ``n_vocab`` are timestamps; columns from ``n_vocab`` on are padding."""

    @staticmethod
    def execute[
        target: StaticString,
        timestamp_begin: Int,
        n_vocab: Int,
    ](
        guess: OutputTensor[dtype=DType.int64, rank=2, ...],
        margin: OutputTensor[dtype=DType.float32, rank=2, ...],
        scores: InputTensor[dtype=DType.float32, rank=3, ...],
        hidden: InputTensor[dtype=DType.float32, rank=3, ...],
        embedding_t: InputTensor[dtype=DType.float32, rank=2, ...],
        ctx: DeviceContext,
    ) raises:
        var n_rows = scores.dim_size(0) * scores.dim_size(1)
        var width = scores.dim_size(2)
        var state = hidden.dim_size(2)
        if width < n_vocab or embedding_t.dim_size(0) != state or embedding_t.dim_size(1) != n_vocab:
            raise Error("draft_choice: scores of every token and the (state, n_vocab) embedding")
        if timestamp_begin < 1 or timestamp_begin >= n_vocab:
            raise Error("draft_choice: the timestamps must follow the text tokens")
        var sp = scores.unsafe_ptr()
        var hp = hidden.unsafe_ptr()
        var ep = embedding_t.unsafe_ptr()
        var gp = guess.unsafe_ptr()
        var mp = margin.unsafe_ptr()
        for i in range(n_rows):
            var row = sp + i * width
            var h = hp + i * state
            # the two best text tokens by their 4-bit scores (ties: the first), then scored exactly
            var best_text = largest(row, 0, timestamp_begin, Float32.MAX)
            var first = first_index(row, 0, timestamp_begin, best_text)
            var runner_up = largest(row, 0, timestamp_begin, best_text)
            var second = first_index(row, 0, timestamp_begin, runner_up) if runner_up > FLOOR else 0
            var first_exact = exact_score(h, ep, state, n_vocab, first)
            var second_exact = exact_score(h, ep, state, n_vocab, second)
            var text_guess = second if second_exact > first_exact else first
            var text_margin = abs(first_exact - second_exact)
            # the timestamps' total probability against the best text token (whisper's timestamp rule)
            var best_time = largest(row, timestamp_begin, n_vocab, Float32.MAX)
            var sums = SIMD[DType.float32, W](0)
            var j = timestamp_begin
            while j + W <= n_vocab:
                sums += exp((row + j).load[width=W]() - best_time)
                j += W
            var total = sums.reduce_add()
            for k in range(j, n_vocab):
                total += exp(row[k] - best_time)
            var time_mass = best_time + log(total)
            if time_mass > best_text:
                gp[i] = Int64(first_index(row, timestamp_begin, n_vocab, best_time))
                mp[i] = time_mass - best_text
            else:
                gp[i] = Int64(text_guess)
                mp[i] = min(text_margin, best_text - time_mass)

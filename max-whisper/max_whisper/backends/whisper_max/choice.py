"""whisper's greedy choice of the next token, as MAX Graph operations on the device.

A greedy step of openai-whisper (``DecodingTask._main_loop`` at temperature 0) masks the
step's logits with its logit filters, takes the first index of each row's maximum, and adds
that token's log-probability to the row's score.  :func:`greedy_choice` does the same after
the ``decoder_step`` graph's logits, so that a GPU hands back two numbers a row instead of
51 864 logits, and the host runs no tensor operation on them (docs/performance.md, entry 40);
on the CPU, as one Mojo op in the ``choice`` graph, on all the logits rows of a speculative
burst at once (entry 47).

The filters split in two.  What depends on the token history only is decided on the host, by
:class:`max_whisper.token_strategies.GreedyMasks`, and enters the graph as data: a bias row of
0 or -inf for the tokens always suppressed (``SuppressTokens``, ``<|notimestamps|>``), and per
row a few half-open token ranges [lo, hi) masked for this step (the timestamp rules'
pairing and monotonicity; an empty range is [0, 0)).  What depends on the logits' values is
computed here: the timestamp rule "if the timestamps' total probability beats every text
token, pick a timestamp", switched on by ``timestamp_rule`` (1) or off (0, ``without_timestamps``).

The masked logits are the step's logits, copied or -inf, so the maximum and its first index are
exactly whisper's.  The log-probabilities are float32 reductions too, not torch's kernels: on one
step of jfk the chosen token's was within 3e-7 of a float64 reference, where torch 2.13's CPU
``log_softmax`` was 2.5e-5 off (docs/performance.md, entry 40).  The timestamp rule compares two
values with the same normaliser, so it does not feel that; a result's ``avg_logprob`` can differ
from the cpu backend's in the fifth decimal.  The end-to-end tests check the tokens.
"""

from __future__ import annotations

from max.dtype import DType
from max.graph import DeviceRef, TensorType, TensorValue, ops


def shifted_log_sum_exp(x: TensorValue) -> tuple[TensorValue, TensorValue]:
    """(shift, log(sum(exp(x - shift)))) over the last axis, keeping it: torch's ``log_softmax`` of ``x``
    is ``(x - shift) - log_sum``, its ``logsumexp`` ``log_sum + shift`` (-inf for a row of -inf)."""
    top = ops.max(x, axis=-1)
    minus_inf = ops.constant(float("-inf"), DType.float32, x.device)
    shift = ops.where(top == minus_inf, ops.constant(0.0, DType.float32, x.device), top)
    return shift, ops.log(ops.sum(ops.exp(x - shift), axis=-1))


def greedy_choice(
    logits: TensorValue,
    suppress: TensorValue,
    ranges: TensorValue,
    timestamp_rule: TensorValue,
    timestamp_begin: int,
    device: DeviceRef,
    kernel: bool = False,
) -> tuple[TensorValue, TensorValue]:
    """whisper's greedy token and its log-probability for each row of ``logits`` (batch, 1, n_vocab).

    ``suppress`` (n_vocab,) float32, 0 or -inf; ``ranges`` (batch, n_ranges, 2) int64 [lo, hi), masked;
    ``timestamp_rule`` (1,) int64, 1 where whisper's ``ApplyTimestampRules`` is among the filters.
    ``kernel``: as one op on MAX's CPU (the CPU plan's ``choice`` graph), else as MAX ops (the GPU plan's
    decoder step). Returns (token (batch,) int64, log-probability (batch,) float32)."""
    if kernel:
        return _greedy_choice_op(logits, suppress, ranges, timestamp_rule, timestamp_begin, device)
    n_vocab = int(logits.shape[-1])
    x = ops.squeeze(logits, 1) + suppress  # (batch, n_vocab): + 0 keeps a logit bit for bit
    index = ops.range(0, n_vocab, 1, dtype=DType.int64, device=device)  # (n_vocab,)
    lo, hi = ranges[:, :, 0:1], ranges[:, :, 1:2]  # (batch, n_ranges, 1)
    inside = ops.cast((index >= lo) & (index < hi), DType.float32)  # (batch, n_ranges, n_vocab)
    masked = ops.squeeze(ops.max(inside, axis=1), 1) > ops.constant(0.0, DType.float32, device)
    minus_inf = ops.constant(float("-inf"), DType.float32, device)
    x = ops.where(masked, minus_inf, x)

    # ApplyTimestampRules: a timestamp if log(sum of the timestamps' probabilities) > the best text token's
    shift, log_sum = shifted_log_sum_exp(x)
    logprobs = (x - shift) - log_sum
    time_shift, time_log_sum = shifted_log_sum_exp(logprobs[:, timestamp_begin:])
    time_mass = time_log_sum + time_shift
    best_text = ops.max(logprobs[:, :timestamp_begin], axis=-1)
    rule_on = timestamp_rule == ops.constant(1, DType.int64, device)
    pick_time = (time_mass > best_text) & rule_on  # (batch, 1)
    x = ops.where(pick_time & (index < timestamp_begin), minus_inf, x)

    # GreedyDecoder at temperature 0: the first maximum (torch's and numpy's rule of ties; ops.argmax
    # may return any index of a tie on a GPU), and its log_softmax, (top - top) - log_sum
    shift, log_sum = shifted_log_sum_exp(x)
    beyond = ops.constant(n_vocab, DType.int64, device)
    token = ops.min(ops.where(x == ops.max(x, axis=-1), index, beyond), axis=-1)  # (batch, 1)
    return ops.squeeze(token, -1), ops.squeeze(-log_sum, -1)


def _greedy_choice_op(
    logits: TensorValue, suppress: TensorValue, ranges: TensorValue, rule: TensorValue, timestamp_begin: int, device
) -> tuple[TensorValue, TensorValue]:
    """The choice as one op on MAX's CPU, ``kernels/greedy_choice.mojo`` (the graph must load that package):
    each row one work item, its passes over the logits row where it lies, the masked ranges skipped (at most
    4 a row)."""
    batch = logits.shape[0] * logits.shape[1]
    out_types = [TensorType(DType.int64, [batch], device), TensorType(DType.float32, [batch], device)]
    parameters = {"timestamp_begin": timestamp_begin}
    token, logprob = ops.custom(
        "greedy_choice", device, [logits, suppress, ranges, rule], out_types, parameters=parameters
    )
    return token.tensor, logprob.tensor

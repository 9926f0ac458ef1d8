"""Compiled single passes (numba) over events: the loops of metrics.py that numpy would run as several passes.

Each kernel reads its arrays once and writes into arrays the caller allocates (numpy allocations stay visible to
tracemalloc, and the caller decides the sizes). Compiled on first use for each combination of argument types, and
cached on disk (`_compiled`). `nogil`: they release the GIL, so threads can run them side by side.

Event keys are the unsigned integers metrics.py sorts: (confidence bits << 1) | correct, uint32 for float32
confidences, uint64 for float64.

Sums marked *reassociated* are vectorised by LLVM in an order of its choosing (fastmath "reassoc"): callers use
them only where the result is the same in every order (metrics._bin_sums: float64 sums proven exact) or where the
order was arbitrary already (sums of squares, as BLAS's dot before).
"""

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic


def _compiled(**options):
    """numba.njit(nogil=True, cache=True, **options). numba caches beside this file, or where that folder is
    read-only (an installed package) in NUMBA_CACHE_DIR or the user's cache folder (~/.cache/numba); where none is
    writable it refuses to cache, at import: then the kernels are compiled in each process instead (seconds)."""
    def decorate(function):
        try:
            return numba.njit(cache=True, nogil=True, **options)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return numba.njit(nogil=True, **options)(function)
    return decorate


_jit = _compiled()
_jit_reassociated = _compiled(fastmath={"reassoc"})
_SUM_BLOCK = 1 << 13  # terms per partial sum of squared_errors


@intrinsic
def _key_confidence(typingctx, key):
    """The confidence an event key holds: uint32 key -> float32, uint64 -> float64 (shift out the correct bit,
    reinterpret the bits; numba's own integer arithmetic would widen a uint32 to 64 bits first)."""
    if key == types.uint32:
        signature, float_type = types.float32(types.uint32), ir.FloatType()
    elif key == types.uint64:
        signature, float_type = types.float64(types.uint64), ir.DoubleType()
    else:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.lshr(args[0], ir.Constant(args[0].type, 1)), float_type)

    return signature, codegen


@_jit
def event_keys(bits, correct, keys):
    """keys[i] = (bits[i] << 1) | (correct[i] == 1), the sign bit shifted out. bits: a float array's bits [N]
    (uint32 or uint64, any stride); correct [N]: bool as uint8, or float. Returns how many correct[i] are neither
    0 nor 1 (fractions, or invalid values: the caller finds and checks them)."""
    other = 0
    for i in range(bits.size):
        c = correct[i]
        keys[i] = (bits[i] << 1) | (c == 1)
        other += (c != 0) & (c != 1)
    return other


@_jit_reassociated
def bin_stats(keys, starts, ends, lows, highs, hits, conf_sums):
    """Per bin b, keys[starts[b]:ends[b]] (non-empty, any order): smallest and largest key, correct events, and the
    *reassociated* float64 sum of the confidences (exact only where every order gives the same sum)."""
    for b in range(starts.size):
        segment = keys[starts[b]:ends[b]]
        low = high = segment[0]
        correct = 0
        total = 0.0
        for i in range(segment.size):  # indexed, not iterated: numba vectorises only the indexed loop
            key = segment[i]
            low = min(low, key)
            high = max(high, key)
            correct += key & 1
            total += np.float64(_key_confidence(key))
        lows[b], highs[b], hits[b], conf_sums[b] = low, high, correct, total


@_jit
def exponent_sums(keys, mantissa_bits, high, low):
    """Exact sums of the confidences in `keys`, by binary exponent: for each key, its confidence's significand m
    (as an integer, implicit bit included) and biased exponent e, high[e] += m >> 26 and low[e] += m & (2**26 - 1).
    Each part is below 2**27, so 2**36 events cannot overflow int64. mantissa_bits: 23 (float32) or 52 (float64);
    high, low: int64 [2**exponent_bits], zeroed by the caller."""
    fraction = (1 << mantissa_bits) - 1
    for i in range(keys.size):
        bits = keys[i] >> 1
        exponent = bits >> mantissa_bits
        significand = (bits & fraction) | ((exponent != 0) << mantissa_bits)
        high[exponent] += significand >> 26
        low[exponent] += significand & 0x3FFFFFF



@_jit_reassociated
def squares_and_gold(values, gold, rows):
    """values [N, C] float (C-contiguous), gold [N] ints (-1: none): the *reassociated* float64 sum of all squares,
    and over the rows with gold >= 0 the count, sum and sum of squares of values[n, gold[n]]. Blocks of `rows` rows:
    the squares run over a block's contiguous values, then the gold entries are read while it is still in cache.
    Summed per block, then over the blocks: about as accurate as numpy's pairwise sums."""
    n, c = values.shape
    flat = values.reshape(-1)
    sum_sq = gold_sum = gold_sum_sq = 0.0
    n_gold = 0
    for start in range(0, n, rows):  # a block's sums, then the blocks': the rounding error grows with the block size
        block = flat[start * c:min(n, start + rows) * c]
        block_sq = 0.0
        for e in range(block.size):
            v = np.float64(block[e])
            block_sq += v * v
        block_gold = gold[start:start + rows]
        block_gold_sum = block_gold_sq = 0.0
        for i in range(block_gold.size):  # branch-free: vectorised
            g = np.int64(block_gold[i])
            has_gold = g >= 0
            v = np.float64(block[i * c + max(g, 0)]) if has_gold else 0.0
            n_gold += has_gold
            block_gold_sum += v
            block_gold_sq += v * v
        sum_sq += block_sq
        gold_sum += block_gold_sum
        gold_sum_sq += block_gold_sq
    return sum_sq, n_gold, gold_sum, gold_sum_sq


@_jit
def type_confidences(probs, first, second, out):
    """out[n, t] = min(1, probs[n, first[t]] + probs[n, second[t]]) in probs's float type, rounded once; second[t] =
    -1 for a type with one label. probs [N, C], first and second [T] ints, out [N, T]."""
    n, types = out.shape
    for i in range(n):
        for t in range(types):
            v = probs[i, first[t]]
            if second[t] >= 0:
                v += probs[i, second[t]]
            out[i, t] = v if v < 1 else 1


@_jit_reassociated
def first_row_off_sum(probs, tolerance):
    """The first row of probs [N, C] (float, any layout) whose float64 sum is not within `tolerance` of 1 (NaN is
    not), or -1 when every row's is. A row's sum is *reassociated*: its order does not matter at a tolerance far
    above the rounding. One pass that stops at the first bad row: rows sum to 1 at float64 accumulation for the
    price of reading them once (numpy's sum(axis=1) of 9-class rows was 10x slower)."""
    for i in range(probs.shape[0]):
        row = probs[i]
        total = 0.0
        for j in range(row.size):
            total += np.float64(row[j])
        if not abs(total - 1.0) <= tolerance:
            return i
    return -1


@_jit_reassociated
def squared_errors(keys):
    """The *reassociated* float64 sum over the events in `keys` of (confidence - correct)^2, per block of events,
    then over the blocks (as squares_and_gold)."""
    total = 0.0
    for start in range(0, keys.size, _SUM_BLOCK):
        block = keys[start:start + _SUM_BLOCK]
        block_total = 0.0
        for i in range(block.size):
            error = np.float64(_key_confidence(block[i])) - np.float64(block[i] & 1)
            block_total += error * error
        total += block_total
    return total

"""Weight-gradient batching across microbatches (csrc/ops/wgrad_batch.h).

During a pipeline step each microbatch's backward adds its weight gradient into ``.grad``
with a GEMM whose inner size is the microbatch's rows. With few rows that GEMM mostly reads
and writes the gradient: on an H100 an 8192 x 8192 float32 weight gradient from 64 rows
takes ~300 us, of which the products are ~170 us. pipec keeps those products' two operands
instead and runs a parameter's deferred products as one GEMM over their stacked rows, once
they reach ``max_rows`` rows and at the end of the step, so ``.grad`` is complete whenever
your code can see it (also inside a schedule's custom action functions, before which the
deferred products run). A loss function or a ``dw_builders`` runner, which run for every
microbatch, run with batching paused instead: what they add to ``.grad`` goes in at once,
but a ``.grad`` they read may still lack products that are pending. A stage's input
gradients are never deferred. With ``record_timeline``, the products left for the step's
end appear as one ``"WGRAD_FLUSH"`` event per rank after its actions (charts of actions
leave it out; busy times count it).

What changes is the rounding of the sum, not the sum: one GEMM's reduction over the
stacked rows, the way an unpipelined full batch sums, instead of a chain of additions.
The cost is memory: a parameter of shape (p, q) keeps up to ``max_rows * (p + q)`` elements
of activations and gradients alive until its batch runs (64 MiB for 8192 x 8192 float32 at
1024 rows, a quarter of its gradient).

The default is "auto": 1024 rows on a rank whose step has no W actions (GPipe, 1F1B,
Interleaved1F1B, LoopedBFS; in a custom order, a rank without W), off on a rank with them
(zero-bubble schedules place their weight-gradient work in bubbles on purpose; batching
would move it to the step's end). ``set_weight_grad_batching(n)`` or
``PIPEC_WGRAD_BATCH_ROWS=n`` applies n rows to every rank (0 turns it off). Measured with
LocalPipeline's two ranks on one H100 (bench/results/wgrad_auto_H100.md): 1F1B large_bf16
(d=8192, batch 1024, 8 microbatches of 128 rows, 8 layers) 32.5 -> 19.5 ms per step; 1F1B
and Interleaved1F1B large_mb32 (float32, 32 microbatches of 64 rows) 370 -> 299 ms, peak
memory 8645 -> 9589 MiB; on a 2-core
CPU, 1F1B over 2 ranks (d=1024, batch 256, 4 layers) took 106.0 -> 96.8 ms per step with 8
microbatches and 210.1 -> 184.5 ms with 32 (bench/wgrad_batch_cpu.py). In bfloat16 the
batched sum is rounded once where the chain of additions rounds at every microbatch, so
gradients differ from an unbatched run by about one bfloat16 unit (1.1e-2 relative in
that benchmark).
"""

from .. import _C

__all__ = ["set_weight_grad_batching", "get_weight_grad_batching"]


def get_weight_grad_batching():
    """The rows a parameter's deferred weight-gradient products reach before they run as one
    GEMM; 0 when batching is off, ``"auto"`` for the default (1024 rows on ranks whose step
    has no W actions, off on the others). Set by ``set_weight_grad_batching`` or the
    ``PIPEC_WGRAD_BATCH_ROWS`` environment variable (a number or ``auto``)."""
    rows = _C._wgrad_batch_rows()
    return "auto" if rows is None else rows


def set_weight_grad_batching(max_rows):
    """Batch weight gradients of up to ``max_rows`` rows (an int >= 0; 0 turns batching
    off, so every microbatch adds its weight gradient at once; ``"auto"`` restores the
    default). Applies to steps that begin afterwards, in every thread. Returns the previous
    setting."""
    if max_rows == "auto":
        before = _C._wgrad_batch_rows(None)
    else:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int):
            raise TypeError(f"set_weight_grad_batching: max_rows must be an int or 'auto', "
                            f"got {type(max_rows).__name__}")
        if max_rows < 0:
            raise ValueError(f"set_weight_grad_batching: max_rows must be >= 0, got {max_rows}")
        before = _C._wgrad_batch_rows(max_rows)
    return "auto" if before is None else before

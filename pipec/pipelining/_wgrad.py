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

Off by default (``set_weight_grad_batching(1024)`` or ``PIPEC_WGRAD_BATCH_ROWS=1024`` turns
it on): on a 2-core CPU, LocalPipeline 1F1B over 2 ranks (d=1024, batch 256, 4 layers) took
106.0 -> 96.8 and 109.2 -> 102.6 ms per step with 8 microbatches, 210.1 -> 184.5 and
223.8 -> 210.3 ms with 32 (two runs of bench/wgrad_batch_cpu.py), but its effect on GPU pipelines has not been measured yet. Zero-bubble schedules place their
weight-gradient work in bubbles on purpose; batching moves part of it to the end of the step.
"""

from .. import _C

__all__ = ["set_weight_grad_batching", "get_weight_grad_batching"]


def get_weight_grad_batching():
    """The rows a parameter's deferred weight-gradient products reach before they run as one
    GEMM; 0 when batching is off. Default 0, or the ``PIPEC_WGRAD_BATCH_ROWS``
    environment variable."""
    return _C._wgrad_batch_rows()


def set_weight_grad_batching(max_rows):
    """Batch weight gradients of up to ``max_rows`` rows (an int >= 0; 0 turns batching
    off, so every microbatch adds its weight gradient at once). Applies to steps that begin
    afterwards, in every thread. Returns the previous setting."""
    if isinstance(max_rows, bool) or not isinstance(max_rows, int):
        raise TypeError(f"set_weight_grad_batching: max_rows must be an int, got "
                        f"{type(max_rows).__name__}")
    if max_rows < 0:
        raise ValueError(f"set_weight_grad_batching: max_rows must be >= 0, got {max_rows}")
    return _C._wgrad_batch_rows(max_rows)

/* wgrad_batch.h — weight-gradient batching across microbatches.
 *
 * A pipeline step runs one backward per microbatch, and each adds its weight gradient
 * dW += dY^T X into .grad with a GEMM whose inner size is the microbatch's rows. With few
 * rows that GEMM is bound by reading and writing dW, not by its products (8192 x 8192 with
 * 64 rows: ~300 us in fp32 on an H100, where the products alone take ~170 us; bf16 stays at
 * ~140 us from 64 to 256 rows). Inside a batching window, a node's weight-gradient product
 * that would go straight into a leaf's .grad (pc_autograd_fusable_leaf) is deferred instead:
 * its two operands are kept, and the leaf's deferred products run as one GEMM over their
 * concatenated rows when they reach `max_rows` rows, and when the window is flushed. dW is
 * then read and written once per batch instead of once per microbatch.
 *
 * The window is per thread: the pipeline runtime opens one around a rank's actions and
 * flushes it before the step ends, so .grad is complete whenever Python can see it. The sum
 * is the same; only its rounding differs (one GEMM's reduction instead of a chain of beta=1
 * additions, which is also how an unpipelined full batch sums). An operand changed in place
 * before its batch ran is an error, not a silent wrong gradient.
 */
#ifndef PC_OPS_WGRAD_BATCH_H
#define PC_OPS_WGRAD_BATCH_H

#include <stdbool.h>
#include <stdint.h>

#include "../autograd/autograd.h"
#include "../core/tensor.h"

typedef struct PcWgradBatch PcWgradBatch;

/* The setting's "auto" value: PC_WGRAD_AUTO_ROWS for an action list without W actions,
 * off for one with them (zero-bubble schedules place weight-gradient work in bubbles on
 * purpose; batching would move it to the step's end). */
#define PC_WGRAD_AUTO (-2)
#define PC_WGRAD_AUTO_ROWS 1024

/* Process-wide setting read when a window opens: the rows a leaf's deferred products may
 * reach before they run (0: no batching), or PC_WGRAD_AUTO. Default PC_WGRAD_AUTO, or
 * PIPEC_WGRAD_BATCH_ROWS (a number, or "auto"). */
int64_t pc_wgrad_batch_rows(void);
/* rows >= 0, or any negative value for PC_WGRAD_AUTO. */
void pc_wgrad_batch_set_rows(int64_t rows);

/* Open a window on this thread for a list of actions (has_w: whether it holds W actions,
 * for the auto setting). *out is NULL when batching is off or a window is already open
 * here (that one covers the caller). */
PcStatus pc_wgrad_batch_open(PcWgradBatch **out, bool has_w);
/* The window open on this thread, or NULL. */
PcWgradBatch *pc_wgrad_batch_current(void);
/* Whether the window holds deferred products (false for NULL). */
bool pc_wgrad_batch_pending(const PcWgradBatch *b);
/* The timeline's name for the runtime's end-of-step flush. */
#define PC_WGRAD_FLUSH_EVENT "WGRAD_FLUSH"
/* Run every deferred product (the window stays open). */
PcStatus pc_wgrad_batch_flush(PcWgradBatch *b);
/* Close the window: deferred products are dropped (flush first to keep them). NULL is a
 * no-op. */
void pc_wgrad_batch_close(PcWgradBatch *b);
/* Stop deferring on this thread (around user code: what it adds to .grad goes in directly,
 * and pending products still join .grad later, so the sum is the same; flush first when the
 * code may read .grad). Returns whether it paused (then pc_wgrad_batch_resume undoes it);
 * false when already paused or b is NULL. */
bool pc_wgrad_batch_pause(PcWgradBatch *b);
void pc_wgrad_batch_resume(PcWgradBatch *b);
/* Never defer into these leaves (borrowed; NULL clears): a backward whose caller reads
 * their .grad right after it, such as a stage's inputs. */
void pc_wgrad_batch_exclude(PcWgradBatch *b, int n, PcTensor *const *leaves);

/* From a node's apply: defer alpha * l @ r (2-D, l (p, m), r (m, q)) for the leaf behind
 * `edge` when a window is open on this thread and that leaf accumulates here; *deferred
 * tells whether it was taken (else the caller computes it now). */
PcStatus pc_wgrad_defer(PcNode *self, int edge, PcTensor *l, PcTensor *r, double alpha,
                        bool *deferred);

/* Products that ran as part of a batch of two or more, and products deferred at all, in
 * this process (for tests). */
long long pc_wgrad_batched_count(void);
long long pc_wgrad_deferred_count(void);

#endif /* PC_OPS_WGRAD_BATCH_H */

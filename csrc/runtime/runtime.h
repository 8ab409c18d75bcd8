/* runtime.h — executes pipeline schedules: one rank's lowered action list at a time, with
 * the GIL released, over stage Programs.
 *
 * A PcRuntime describes every stage of a pipeline and holds per-microbatch state for the
 * stages this process runs. Two modes:
 *   in-process (LocalPipeline, or a schedule holding every stage): ranks are driven by
 *     pc_runtime_run_rank, one host thread per rank; they exchange activations and gradients
 *     through the runtime's mailboxes (send never blocks; the consumer waits with a deadline
 *     and gives up when another rank failed);
 *   multi-process (pc_runtime_set_comm): this process runs one rank; stages of other ranks
 *     are descriptions without Programs, and values to or from them travel through a
 *     communicator (TCP or NCCL). SEND_F / SEND_B send; RECV_F / RECV_B post receives
 *     (NCCL enqueues them then, in the lowered order both sides share); the action that
 *     uses the data waits for it. Buffers come from the metadata fixed by shape inference
 *     (PcValueMeta); a value that does not match it is a "shape mismatch" / "dtype
 *     mismatch" error. Messages are tagged with (direction, step, stage, input, microbatch).
 *
 * Data flow (general stage graphs, skip connections included): stage input k comes from a
 * model input or from output o of an earlier stage; an output may feed several later stages
 * and its gradient is the sum of what they send back.
 *   F  runs the stage Program with autograd (inputs are fresh leaves); on the last stage the
 *      loss callback turns outputs + target into the microbatch loss.
 *   I  computes input gradients and queues weight work (split backward); W runs it (or the
 *      stage's dW callback when the stage has one).
 *   B  is I followed by W (bitwise equal to a full backward).
 *   SEND_F / SEND_B post values to consumers on other ranks; RECV_F / RECV_B wait for them.
 *   Values for a consumer on the same rank are handed over at F / backward time.
 *   REDUCE_GRAD, UNSHARD, RESHARD: no-ops (no data parallelism here).
 *   OVERLAP_F_B runs its sub-actions in order.
 * Callbacks into Python (loss, dW, after each microbatch's output) are function pointers
 * supplied by csrc/py/, which take the GIL themselves.
 */
#ifndef PC_RUNTIME_RUNTIME_H
#define PC_RUNTIME_RUNTIME_H

#include "../comm/comm.h"
#include "../graph/program.h"
#include "../sched/action.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PcRuntime PcRuntime;

/* Callbacks (ctx is the runtime's `cb_ctx`). Each returns a status; PC_ERR_PYTHON keeps the
 * Python error for the thread that called pc_runtime_run_rank. */
typedef struct PcRuntimeCallbacks {
    void *ctx;
    /* loss = loss_fn(outputs, target of microbatch mb). New reference in *loss. */
    PcStatus (*loss)(void *ctx, int stage, int mb, int n_out, PcTensor *const *outs,
                     PcTensor **loss);
    /* the stage's custom weight-gradient work for microbatch mb (dw_builder), or NULL */
    PcStatus (*dw)(void *ctx, int stage, int mb);
    /* true when stage has a dw_builder */
    bool (*has_dw)(void *ctx, int stage);
    /* true when actions of this type run a user function instead of the built-in one
     * (register_custom_function); may be NULL */
    bool (*has_custom)(void *ctx, PcActType type);
    /* run the user function for one action (its text form) on `rank` */
    PcStatus (*custom)(void *ctx, int rank, const char *action);
} PcRuntimeCallbacks;

/* Where a stage input comes from: a model input (src_stage == -1, src_idx = input number)
 * or output src_idx of stage src_stage. */
typedef struct PcStageInput {
    int src_stage;
    int src_idx;
} PcStageInput;

/* What travels between processes for one stage input or output: fixed at the first step
 * (shape inference) and checked on every send. */
typedef struct PcValueMeta {
    PcDType dtype;
    int ndim;
    int64_t shape[PC_MAX_DIMS];
    bool requires_grad;       /* a gradient travels back for it in training steps */
} PcValueMeta;

typedef struct PcRuntimeStageDesc {
    int rank;                 /* rank that runs this stage */
    PcDevice device;
    const PcProgram *prog;    /* borrowed for the runtime's lifetime; NULL for a stage of
                                 another process (multi-process mode) */
    int n_ext;
    PcTensor *const *ext;     /* borrowed: parameters/buffers, in the Program's order */
    int n_in;
    const PcStageInput *in;   /* [n_in] */
    int n_out;
    const PcValueMeta *in_meta;  /* [n_in] or NULL; copied. Needed in multi-process mode */
    const PcValueMeta *out_meta; /* [n_out] or NULL; copied     for this process's stages */
} PcRuntimeStageDesc;

/* Build a runtime for n_stages stages and n_mb microbatches. The last stage's outputs are
 * the model outputs (loss inputs). Copies the descriptions. */
PcStatus pc_runtime_create(int n_stages, const PcRuntimeStageDesc *stages, int n_mb,
                           const PcRuntimeCallbacks *cb, double timeout_s, PcRuntime **out);
void pc_runtime_free(PcRuntime *rt);

/* Multi-process mode: this process runs `rank` only and reaches the others through comm
 * (borrowed; must outlive the runtime's use). Every stage of `rank` needs a Program, and
 * in_meta/out_meta wherever it exchanges values with another rank. */
PcStatus pc_runtime_set_comm(PcRuntime *rt, PcComm *comm, int rank);

/* Start a step: model inputs per microbatch (inputs[mb * n_model_in + i], borrowed);
 * training = run backward work (false for eval: B/I/W actions are skipped). Clears state. */
PcStatus pc_runtime_begin_step(PcRuntime *rt, int n_model_in, PcTensor *const *inputs,
                               bool training, bool record_timeline);

/* Run one rank's actions (lowered with communication) to completion. Thread-safe across
 * distinct ranks. On failure marks the runtime failed so that waiting ranks give up. */
PcStatus pc_runtime_run_rank(PcRuntime *rt, int rank, const PcActionList *actions);

/* Run the built-in handler of one action on `rank` (what a custom function replaced), from
 * inside a custom function. */
PcStatus pc_runtime_run_builtin(PcRuntime *rt, int rank, const PcAction *action);

/* Results after all ranks ran: last-stage outputs of mb (borrowed) and its loss (borrowed
 * or NULL). In multi-process mode only the last stage's rank has them. */
PcStatus pc_runtime_outputs(PcRuntime *rt, int mb, int *n_out, PcTensor ***outs);
PcTensor *pc_runtime_loss(PcRuntime *rt, int mb);
/* After a training step: the gradients of microbatch mb's model inputs that require grad,
 * one entry per stage input of this process that reads one (a model input read by several
 * stages has several entries, to be summed). Writes up to cap entries (model input index,
 * borrowed gradient) and returns how many there are. */
int pc_runtime_input_grads(PcRuntime *rt, int mb, int cap, int *idx, PcTensor **grads);
/* Drop per-step state (activations, graphs, received buffers). */
void pc_runtime_end_step(PcRuntime *rt);
/* Stop the step from any thread (a KeyboardInterrupt in the thread that waits for the
 * ranks): every rank's run_rank returns an error at its next action or wait. The next
 * begin_step clears it. */
void pc_runtime_interrupt(PcRuntime *rt);

/* Timeline of the last step: n events of (rank, action text, start_us, end_us). */
typedef struct PcTimelineEvent {
    int rank;
    char action[PC_ACTION_TEXT_MAX];
    double start_us, end_us;
} PcTimelineEvent;
int pc_runtime_timeline(const PcRuntime *rt, const PcTimelineEvent **events);

#ifdef __cplusplus
}
#endif
#endif /* PC_RUNTIME_RUNTIME_H */

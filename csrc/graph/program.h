/* program.h — traced Programs: op lists over value slots; tracing; splitting; replay.
 *
 * A PcProgram is a straight-line list of PcCalls over numbered slots. Slot kinds:
 *   VALUE     produced by an instruction;
 *   INPUT     fed by the caller (the model's tensor arguments), in `inputs` order;
 *   EXTERNAL  a tensor that existed before tracing and is fed by the caller at run time in
 *             `externals` order (parameters and buffers: the owning module passes its
 *             current tensors, so moving or reloading them needs no re-trace);
 *   CONST     a captured tensor owned by the Program (default kwargs, other captured data).
 * `marks` hold the instruction index at which each pipe_split boundary falls.
 *
 * Tracing: pc_trace_begin installs a thread-local tracer; the Python binding calls
 * pc_trace_record after every op it runs (and pc_trace_mark for pipe_split); pc_trace_end
 * returns the Program. Tensors met during tracing are held so that their addresses stay
 * unique. Splitting cuts a Program at its marks into per-stage Programs; a value made in
 * stage i and used in stage j > i becomes an output of i and an input of j.
 *
 * Ownership: Programs own their instruction arrays, constants (references) and PYFUNC
 * contexts (released through py_release, which csrc/py sets). All functions returning a
 * Program give the caller ownership (pc_program_free).
 */
#ifndef PC_GRAPH_PROGRAM_H
#define PC_GRAPH_PROGRAM_H

#include "call.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PC_INSTR_MAX_OUT 4

typedef enum PcSlotKind {
    PC_SLOT_VALUE = 0,
    PC_SLOT_INPUT = 1,
    PC_SLOT_EXTERNAL = 2,
    PC_SLOT_CONST = 3
} PcSlotKind;

typedef struct PcInstr {
    PcCall call;
    int *in;                      /* owned [call.n_in]: slot, or -1 for an absent tensor */
    int out[PC_INSTR_MAX_OUT];    /* slots of the call's outputs */
    /* What tracing saw (for split policies; not part of the code, same_code ignores it):
     * the elements of each output, and the floating-point operations of the matrix products
     * run since the previous recorded call, a custom Function's body included. */
    int64_t out_numel[PC_INSTR_MAX_OUT];
    double flops;
} PcInstr;

typedef struct PcProgram {
    int n_slots;
    PcSlotKind *kind;             /* owned [n_slots] */
    PcTensor **konst;             /* owned [n_slots]: references for CONST slots, else NULL */
    int n_inputs;
    int *inputs;                  /* owned: INPUT slots in caller order */
    int n_externals;
    int *externals;               /* owned: EXTERNAL slots in caller order */
    PcTensor **traced_ext;        /* owned [n_externals]: trace-time tensors, or NULL */
    int n_outputs;
    int *outputs;                 /* owned: slots returned, in order */
    int n_instrs, cap_instrs;
    PcInstr *instrs;              /* owned */
    int n_marks;
    int *marks;                   /* owned: instruction index of each boundary */
    void (*py_release)(void *py); /* releases PYFUNC contexts (GIL taken inside) */
    void (*py_retain)(void *py);  /* adds a reference to a PYFUNC context (for splitting) */
    bool reads_shapes;            /* the traced code read the shape of an input or of a value
                                     made from one (x.shape, size(), len()...): sizes may be
                                     baked into the Program (kept by splitting) */
    int *alias;                   /* owned [n_slots] or NULL (not traced): the lowest slot
                                     whose traced tensor shared this slot's storage (views),
                                     itself when none; splitting checks in-place writes with it */
} PcProgram;

typedef struct PcTracer PcTracer;

/* ---- tracing (thread-local) ---- */
PcStatus pc_trace_begin(PcTracer **out);
/* The active tracer of this thread, or NULL. Paused tracers report NULL. */
PcTracer *pc_trace_active(void);
/* Pause/resume recording (custom Function bodies run paused). Returns the previous state. */
bool pc_trace_set_paused(bool paused);
PcStatus pc_trace_input(PcTracer *tr, PcTensor *t);
/* Python read t's shape while tr records: notes it when t is an input or a value made from
 * the inputs (PcProgram.reads_shapes). */
void pc_trace_note_shape_read(PcTracer *tr, const PcTensor *t);
/* Record a call that just ran. For PYFUNC the Program takes over c->py (one reference). */
PcStatus pc_trace_record(PcTracer *tr, const PcCall *c, PcTensor *const *in,
                         PcTensor *const *out);
PcStatus pc_trace_mark(PcTracer *tr);
/* Count a matrix product's floating-point operations towards the next recorded call (also
 * while the tracer is paused, so a custom Function's call carries its body's products).
 * No-op when this thread is not tracing. */
void pc_trace_count_flops(double flops);
/* Finish: outputs in order. Ends tracing on this thread and frees the tracer. */
PcStatus pc_trace_end(PcTracer *tr, int n_out, PcTensor *const *outs, PcProgram **out);
/* Abandon a trace (on error). */
void pc_trace_abort(PcTracer *tr);

/* ---- programs ---- */
/* The tensor held for EXTERNAL slot externals[i] at trace time (borrowed; NULL after the
 * Program was split or copied). */
PcTensor *pc_program_external_tensor(const PcProgram *p, int i);
/* Turn EXTERNAL number i into a CONST bound to its traced tensor (captured data). */
PcStatus pc_program_make_const(PcProgram *p, int i);
/* Run: inputs[n_inputs], externals[n_externals]; outputs as new references. */
PcStatus pc_program_run(const PcProgram *p, PcTensor *const *inputs,
                        PcTensor *const *externals, PcTensor **outputs);
/* Replace the pipe_split marks: n instruction indices, strictly increasing, in
 * [0, n_instrs]. */
PcStatus pc_program_set_marks(PcProgram *p, int n, const int *marks);
/* Move CONST tensors to dev (for build_stage on another device). */
PcStatus pc_program_consts_to(PcProgram *p, PcDevice dev);
void pc_program_free(PcProgram *p);

/* Per-stage wiring of a split, in the original Program's slot numbers. */
typedef struct PcStageIO {
    int n_in, *in;                /* owned: original slots fed to the stage (its inputs) */
    int n_ext, *ext;              /* owned: original EXTERNAL slots the stage uses */
    int n_out, *out;              /* owned: original slots the stage returns */
} PcStageIO;

/* Cut p at its marks (empty stages between consecutive marks are dropped). On success
 * *n_stages programs and wirings are returned in owned arrays. PC_ERR_INVALID when a cut
 * would lose an in-place write (pc_program_cut_loses_write). */
PcStatus pc_program_split(const PcProgram *p, int *n_stages, PcProgram ***stages,
                          PcStageIO **io);
void pc_stage_io_free(int n, PcStageIO *io);

/* For a traced Program cut so that instruction k runs in stage stage_of[k] (non-decreasing):
 * the first instruction whose in-place write a stage would not see, or -1. Stages hold
 * their own copies of received values and of parameters/buffers, so a write is lost when
 *   - it goes through one alias (a view) received from an earlier stage, and another alias
 *     received separately is read after it or returned; or it goes through a view made in
 *     its own stage, and an alias from an earlier stage is read in a later stage or
 *     returned; or
 *   - it updates a parameter/buffer (or a view of one) that another stage also uses.
 * *other gets the slot whose copy misses the write. -1 when p has no alias table. */
int pc_program_cut_loses_write(const PcProgram *p, const int *stage_of, int *other);

/* True when a and b do the same work: the same slots, calls with the same arguments (ints,
 * sizes, scalars), wiring and constants of the same dtype and shape, and the same values
 * for constants up to 64 KiB (custom Functions' Python objects are not compared). Two
 * traces of one model on inputs of different shapes are the same code unless a size of
 * the inputs was baked in. */
bool pc_program_same_code(const PcProgram *a, const PcProgram *b);

/* Human-readable listing into a malloc'd string (caller frees). */
char *pc_program_format(const PcProgram *p);

#ifdef __cplusplus
}
#endif
#endif /* PC_GRAPH_PROGRAM_H */

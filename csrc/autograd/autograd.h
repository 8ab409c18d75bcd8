/* autograd.h — reverse-mode autograd: graph nodes, saved tensors, grad mode, the engine.
 *
 * The graph: every differentiable op that produced a tensor requiring grad records a PcNode
 * (its grad_fn). A node's edges point at the nodes that produced its inputs (or at a leaf's
 * AccumulateGrad node). Nodes are refcounted; a tensor owns a reference to its grad_fn and
 * a node owns references to the nodes on its edges, so the graph lives while any output does.
 *
 * Node subtypes embed PcNode as their first member and supply a PcNodeVTable. `apply`
 * receives one gradient per forward output (NULL = zero/absent; single-output nodes always
 * get a non-NULL one) and writes a new reference into grad_inputs[j] for every edge j with
 * needs[j] true (it may write NULL to mean "zero"). It must not accumulate into anything,
 * with one exception: a product it may add straight into the .grad that
 * pc_autograd_fusable_grad hands it (then it writes NULL for that edge).
 *
 * Saved tensors (PcSaved) remember the storage version at save time; reading one after an
 * in-place write, or after the graph was freed by a backward without retain_graph, fails
 * with a torch-like message.
 *
 * Split backward (zero-bubble schedules): pc_autograd_backward_input computes only the
 * gradients along paths to the given inputs; every node on those paths that also has edges
 * leading to other leaves (weights) is queued, with its output gradients, in a PcWeightWork.
 * pc_weight_work_run later runs those nodes for their weight edges only and propagates into
 * the weight leaves (accumulating into .grad). Together they equal one full backward.
 */
#ifndef PC_AUTOGRAD_AUTOGRAD_H
#define PC_AUTOGRAD_AUTOGRAD_H

#include "../core/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

struct PcNode;

typedef struct PcEdge {
    struct PcNode *fn;  /* owned reference; NULL = this input needs no gradient */
    int input_nr;       /* which output of fn (== which grad slot of fn) */
} PcEdge;

typedef struct PcNodeVTable {
    const char *name;   /* torch-style, e.g. "MmBackward0" */
    PcStatus (*apply)(struct PcNode *self, PcTensor *const *grad_outputs, const bool *needs,
                      PcTensor **grad_inputs);
    /* Drop saved state (saved tensors, Python context). Idempotent. May be NULL. */
    void (*release)(struct PcNode *self);
} PcNodeVTable;

/* Shape/dtype/device of one forward output: used to build zero gradients when needed. */
typedef struct PcTensorMeta {
    int ndim;
    int64_t shape[PC_MAX_DIMS];
    PcDType dtype;
    PcDevice device;
} PcTensorMeta;

typedef struct PcNode {
    atomic_long refcount;
    const PcNodeVTable *vt;
    uint64_t seq;            /* creation order; the engine runs later nodes first */
    int n_outputs;           /* forward outputs = gradients this node receives */
    PcTensorMeta *out_meta;  /* owned array [n_outputs] */
    int n_edges;             /* forward inputs */
    PcEdge *edges;           /* owned array [n_edges] */
    bool released;           /* saved state freed: a second backward must fail */
    PcTensor *leaf;          /* AccumulateGrad only: owned reference to the leaf */
} PcNode;

typedef struct PcSaved {
    PcTensor *t;             /* owned reference or NULL */
    unsigned version;
} PcSaved;

/* ---- grad mode (thread-local) ---- */
bool pc_grad_enabled(void);
void pc_set_grad_enabled(bool on);

/* ---- building graphs (used by ops and the Python custom Function) ---- */

/* Allocate a zeroed node of `size` bytes (>= sizeof(PcNode)) with `n_outputs` outputs and one
 * edge per input (edge of an input that does not require grad stays NULL). Returns a new
 * reference. inputs may contain NULL (non-tensor arguments). */
PcStatus pc_node_create(size_t size, const PcNodeVTable *vt, int n_outputs, int n_inputs,
                        PcTensor *const *inputs, PcNode **out);
void pc_node_incref(PcNode *n);
void pc_node_decref(PcNode *n);

/* Make `out` (a fresh tensor) output `output_nr` of `node`: sets requires_grad, grad_fn (new
 * reference) and records its meta. */
void pc_autograd_set_history(PcTensor *out, PcNode *node, int output_nr);

/* True when grad mode is on and any of the n tensors (NULL allowed) requires grad. */
bool pc_autograd_any_requires_grad(int n, PcTensor *const *ts);

/* The edge a gradient for `t` should flow along (its grad_fn, or its leaf accumulator,
 * created on demand). fn == NULL when t does not require grad. New reference in out->fn. */
PcStatus pc_autograd_edge_of(PcTensor *t, PcEdge *out);

/* Save t (a new reference). To save a node's own output, save a detached view of it
 * (pc_op_detach) so that the node does not keep itself alive through out->grad_fn. */
PcStatus pc_saved_set(PcSaved *s, PcTensor *t);
/* New reference in *out (NULL if nothing was saved). Fails after release or in-place edits. */
PcStatus pc_saved_get(const PcSaved *s, const PcNode *owner, PcTensor **out);
void pc_saved_clear(PcSaved *s);

/* ---- running backward ---- */

/* Full backward from roots: grads[i] NULL means ones (only for single-element roots).
 * Accumulates into the .grad of leaves. retain_graph false frees saved state. */
PcStatus pc_autograd_backward(int n_roots, PcTensor *const *roots, PcTensor *const *grads,
                              bool retain_graph);

/* Gradients of roots w.r.t. inputs, returned (new references; NULL when unused and
 * allow_unused, else an error), nothing accumulated into .grad. */
PcStatus pc_autograd_grad(int n_roots, PcTensor *const *roots, PcTensor *const *grads,
                          int n_inputs, PcTensor *const *inputs, bool retain_graph,
                          bool allow_unused, PcTensor **results);

/* Inside a node's apply: the .grad of the leaf that edge `edge` of `self` feeds, when this
 * pass accumulates that gradient straight into it (full backward or phase W, the leaf still
 * requires grad and already has a contiguous .grad of its own shape, dtype and device that
 * nothing else references: no saved tensor, operand, view or Python object), so
 * the node may add its gradient into .grad itself (a GEMM with beta = 1: no temporary, no
 * separate addition) and return NULL for that edge. NULL otherwise. Borrowed. The caller
 * bumps .grad's version after writing it. */
PcTensor *pc_autograd_fusable_grad(const PcNode *self, int edge);
/* Inside a node's apply: the leaf that edge `edge` of `self` feeds straight (its
 * AccumulateGrad), when this pass accumulates into it (full backward or phase W) and the
 * leaf still requires grad and has either no .grad or one pc_autograd_fusable_grad would
 * hand out. Borrowed. For pc_wgrad_defer, which adds the gradient to .grad later. */
PcTensor *pc_autograd_fusable_leaf(const PcNode *self, int edge);
/* A node added a gradient into .grad itself (counted for tests and profiling). */
void pc_autograd_note_fused(void);
/* How many gradients were added into .grad that way in this process. */
long long pc_autograd_fused_count(void);

typedef struct PcWeightWork PcWeightWork;

/* Split backward, phase I: returns input gradients in results (as pc_autograd_grad) and the
 * queued weight work in *work (never NULL on success, possibly empty). The graph is kept
 * until the work runs or is freed. */
PcStatus pc_autograd_backward_input(int n_roots, PcTensor *const *roots,
                                    PcTensor *const *grads, int n_inputs,
                                    PcTensor *const *inputs, PcTensor **results,
                                    PcWeightWork **work);
/* Phase W: accumulate every queued weight gradient into its leaf's .grad. Runs once. */
PcStatus pc_weight_work_run(PcWeightWork *work, bool retain_graph);
/* Number of nodes queued (0 once run). */
int pc_weight_work_size(const PcWeightWork *work);
void pc_weight_work_free(PcWeightWork *work);

#ifdef __cplusplus
}
#endif
#endif /* PC_AUTOGRAD_AUTOGRAD_H */

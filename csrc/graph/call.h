/* call.h — one op invocation as data (PcCall), the unit that traced Programs replay.
 *
 * Every op the Python binding exposes is executed by filling a PcCall and running it with
 * pc_call_run; while a trace is active the same PcCall is recorded (csrc/graph/program.h).
 * Replaying a Program therefore runs exactly the code the eager call ran, with no Python
 * unless the call is a custom Function (PC_OPC_PYFUNC), whose body is a callback supplied
 * by csrc/py/.
 *
 * Field use per opcode is documented next to each enum value. `in` entries may be NULL for
 * optional tensors (linear bias, layer_norm weight/bias).
 */
#ifndef PC_GRAPH_CALL_H
#define PC_GRAPH_CALL_H

#include "../ops/ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PC_CALL_MAX_IN 64

typedef enum PcOpcode {
    PC_OPC_UNARY,       /* ints[0] = PcUnaryOp, d[0] = scalar              in: x        out: 1 */
    PC_OPC_UNARY_,      /* in place, same fields                           in: self     out: self */
    PC_OPC_BINARY,      /* ints[0] = PcBinaryOp, d[0] = alpha              in: a, b     out: 1 */
    PC_OPC_BINARY_,     /* in place                                        in: a, b     out: a */
    PC_OPC_MM,          /*                                                 in: a, b */
    PC_OPC_MATMUL,      /*                                                 in: a, b */
    PC_OPC_ADDMM,       /* d[0] = beta, d[1] = alpha                       in: bias, a, b */
    PC_OPC_LINEAR,      /*                                                 in: x, w, b|NULL */
    PC_OPC_SUM,         /* ints[0] = ndims, ints[1..] = dims, flag = keepdim */
    PC_OPC_MEAN,        /* as SUM */
    PC_OPC_MAX_ALL,
    PC_OPC_MAX_DIM,     /* ints[0] = dim, flag = keepdim                   out: values, indices */
    PC_OPC_VIEW,        /* ints[0] = ndim, sizes[] = shape */
    PC_OPC_RESHAPE,     /* as VIEW */
    PC_OPC_EXPAND,      /* as VIEW */
    PC_OPC_FLATTEN,     /* ints[0] = start, ints[1] = end */
    PC_OPC_TRANSPOSE,   /* ints[0], ints[1] */
    PC_OPC_T,
    PC_OPC_PERMUTE,     /* ints[0] = ndims, ints[1..] = dims */
    PC_OPC_UNSQUEEZE,   /* ints[0] = dim */
    PC_OPC_SQUEEZE,     /* ints[0] = dim or PC_ALL_DIMS */
    PC_OPC_SLICE,       /* ints[0] = dim, sizes[0..2] = start, stop, step */
    PC_OPC_SELECT,      /* ints[0] = dim, sizes[0] = index */
    PC_OPC_CAT,         /* ints[0] = dim                                   in: n tensors */
    PC_OPC_STACK,       /* ints[0] = dim */
    PC_OPC_SOFTMAX,     /* ints[0] = dim, flag = log */
    PC_OPC_MSE_LOSS,    /* ints[0] = PcReduction                           in: input, target */
    PC_OPC_CROSS_ENTROPY, /* ints[0] = PcReduction                         in: input, target */
    PC_OPC_LAYER_NORM,  /* ints[0] = norm ndim, d[0] = eps                 in: x, w|NULL, b|NULL */
    PC_OPC_DROPOUT,     /* d[0] = p, flag = training */
    PC_OPC_EMBEDDING,   /*                                                 in: weight, idx */
    PC_OPC_TO,          /* ints[0] = dtype, ints[1] = device type, ints[2] = device index */
    PC_OPC_CLONE,
    PC_OPC_DETACH,
    PC_OPC_CONTIGUOUS,
    PC_OPC_COPY_,       /*                                                 in: self, src  out: self */
    PC_OPC_FILL_,       /* d[0] = value                                    in: self       out: self */
    PC_OPC_ZERO_,       /*                                                 in: self       out: self */
    PC_OPC_PYFUNC,      /* a custom Function: `py` is its callback context (see PcPyCallback) */
    PC_NUM_OPCODES
} PcOpcode;

/* A callback that runs a custom Function's forward with autograd recording (csrc/py/). */
typedef PcStatus (*PcPyCallback)(void *py, int n_in, PcTensor *const *in, int n_out,
                                 PcTensor **out);

typedef struct PcCall {
    PcOpcode opc;
    int n_in;
    int n_out;                 /* 1, or 2 for MAX_DIM; PYFUNC: its tensor outputs */
    int ints[PC_MAX_DIMS + 2];
    int64_t sizes[PC_MAX_DIMS];
    double d[2];
    bool flag;
    PcPyCallback pyfn;         /* PYFUNC only */
    void *py;                  /* PYFUNC only: owned by the Program (see program.h) */
} PcCall;

/* Run one call: in[0..n_in), outputs as new references in out[0..n_out). In-place calls
 * return their self input (new reference) as out[0]. */
PcStatus pc_call_run(const PcCall *c, PcTensor *const *in, PcTensor **out);

/* The opcode's name, for printing Programs ("linear", "relu", ...). */
const char *pc_call_name(const PcCall *c);

/* True for calls that write into their first input (in-place). */
bool pc_call_is_inplace(const PcCall *c);

#ifdef __cplusplus
}
#endif
#endif /* PC_GRAPH_CALL_H */

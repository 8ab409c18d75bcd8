/* call.c — pc_call_run: execute a PcCall by dispatching to the pc_op_* functions
 * (see call.h). No Python here: PYFUNC calls go through the callback csrc/py/ supplied.
 */
#include "call.h"

static PcStatus self_out(PcStatus st, PcTensor *self, PcTensor **out) {
    if (st != PC_OK) return st;
    pc_tensor_incref(self);
    out[0] = self;
    return PC_OK;
}

PcStatus pc_call_run(const PcCall *c, PcTensor *const *in, PcTensor **out) {
    const int *I = c->ints;
    switch (c->opc) {
    case PC_OPC_UNARY: return pc_op_unary((PcUnaryOp)I[0], in[0], c->d[0], &out[0]);
    case PC_OPC_UNARY_: return self_out(pc_op_unary_((PcUnaryOp)I[0], in[0], c->d[0]), in[0], out);
    case PC_OPC_BINARY: return pc_op_binary((PcBinaryOp)I[0], in[0], in[1], c->d[0], &out[0]);
    case PC_OPC_BINARY_:
        return self_out(pc_op_binary_((PcBinaryOp)I[0], in[0], in[1], c->d[0]), in[0], out);
    case PC_OPC_MM: return pc_op_mm(in[0], in[1], &out[0]);
    case PC_OPC_MATMUL: return pc_op_matmul(in[0], in[1], &out[0]);
    case PC_OPC_ADDMM: return pc_op_addmm(in[0], in[1], in[2], c->d[0], c->d[1], &out[0]);
    case PC_OPC_LINEAR: return pc_op_linear(in[0], in[1], c->n_in > 2 ? in[2] : NULL, &out[0]);
    case PC_OPC_SUM: return pc_op_sum(in[0], I[0], I + 1, c->flag, &out[0]);
    case PC_OPC_MEAN: return pc_op_mean(in[0], I[0], I + 1, c->flag, &out[0]);
    case PC_OPC_MAX_ALL: return pc_op_max_all(in[0], &out[0]);
    case PC_OPC_MAX_DIM: return pc_op_max_dim(in[0], I[0], c->flag, &out[0], &out[1]);
    case PC_OPC_VIEW: return pc_op_view(in[0], I[0], c->sizes, &out[0]);
    case PC_OPC_RESHAPE: return pc_op_reshape(in[0], I[0], c->sizes, &out[0]);
    case PC_OPC_EXPAND: return pc_op_expand(in[0], I[0], c->sizes, &out[0]);
    case PC_OPC_FLATTEN: return pc_op_flatten(in[0], I[0], I[1], &out[0]);
    case PC_OPC_TRANSPOSE: return pc_op_transpose(in[0], I[0], I[1], &out[0]);
    case PC_OPC_T: return pc_op_t(in[0], &out[0]);
    case PC_OPC_PERMUTE: return pc_op_permute(in[0], I[0], I + 1, &out[0]);
    case PC_OPC_UNSQUEEZE: return pc_op_unsqueeze(in[0], I[0], &out[0]);
    case PC_OPC_SQUEEZE: return pc_op_squeeze(in[0], I[0], &out[0]);
    case PC_OPC_SLICE:
        return pc_op_slice(in[0], I[0], c->sizes[0], c->sizes[1], c->sizes[2], &out[0]);
    case PC_OPC_SELECT: return pc_op_select(in[0], I[0], c->sizes[0], &out[0]);
    case PC_OPC_CAT: return pc_op_cat(c->n_in, in, I[0], &out[0]);
    case PC_OPC_STACK: return pc_op_stack(c->n_in, in, I[0], &out[0]);
    case PC_OPC_SOFTMAX: return pc_op_softmax(in[0], I[0], c->flag, &out[0]);
    case PC_OPC_MSE_LOSS: return pc_op_mse_loss(in[0], in[1], (PcReduction)I[0], &out[0]);
    case PC_OPC_CROSS_ENTROPY:
        return pc_op_cross_entropy(in[0], in[1], (PcReduction)I[0], &out[0]);
    case PC_OPC_LAYER_NORM:
        return pc_op_layer_norm(in[0], I[0], c->n_in > 1 ? in[1] : NULL,
                                c->n_in > 2 ? in[2] : NULL, c->d[0], &out[0]);
    case PC_OPC_DROPOUT: return pc_op_dropout(in[0], c->d[0], c->flag, &out[0]);
    case PC_OPC_EMBEDDING: return pc_op_embedding(in[0], in[1], &out[0]);
    case PC_OPC_TO: {
        PcDevice dev = {(PcDeviceType)I[1], I[2]};
        return pc_op_to(in[0], (PcDType)I[0], dev, &out[0]);
    }
    case PC_OPC_CLONE: return pc_op_clone(in[0], &out[0]);
    case PC_OPC_DETACH: return pc_op_detach(in[0], &out[0]);
    case PC_OPC_CONTIGUOUS: return pc_op_contiguous(in[0], &out[0]);
    case PC_OPC_COPY_: return self_out(pc_op_copy_(in[0], in[1]), in[0], out);
    case PC_OPC_FILL_: return self_out(pc_op_fill_(in[0], c->d[0]), in[0], out);
    case PC_OPC_ZERO_: return self_out(pc_op_zero_(in[0]), in[0], out);
    case PC_OPC_PYFUNC:
        if (!c->pyfn) return pc_set_error(PC_ERR_RUNTIME, "custom Function call without callback");
        return c->pyfn(c->py, c->n_in, in, c->n_out, out);
    default: break;
    }
    return pc_set_error(PC_ERR_INVALID, "unknown opcode %d", (int)c->opc);
}

const char *pc_call_name(const PcCall *c) {
    static const char *names[PC_NUM_OPCODES] = {
        [PC_OPC_UNARY] = "unary", [PC_OPC_UNARY_] = "unary_", [PC_OPC_BINARY] = "binary",
        [PC_OPC_BINARY_] = "binary_", [PC_OPC_MM] = "mm", [PC_OPC_MATMUL] = "matmul",
        [PC_OPC_ADDMM] = "addmm", [PC_OPC_LINEAR] = "linear", [PC_OPC_SUM] = "sum",
        [PC_OPC_MEAN] = "mean", [PC_OPC_MAX_ALL] = "max", [PC_OPC_MAX_DIM] = "max_dim",
        [PC_OPC_VIEW] = "view", [PC_OPC_RESHAPE] = "reshape", [PC_OPC_EXPAND] = "expand",
        [PC_OPC_FLATTEN] = "flatten", [PC_OPC_TRANSPOSE] = "transpose", [PC_OPC_T] = "t",
        [PC_OPC_PERMUTE] = "permute", [PC_OPC_UNSQUEEZE] = "unsqueeze",
        [PC_OPC_SQUEEZE] = "squeeze", [PC_OPC_SLICE] = "slice", [PC_OPC_SELECT] = "select",
        [PC_OPC_CAT] = "cat", [PC_OPC_STACK] = "stack", [PC_OPC_SOFTMAX] = "softmax",
        [PC_OPC_MSE_LOSS] = "mse_loss", [PC_OPC_CROSS_ENTROPY] = "cross_entropy",
        [PC_OPC_LAYER_NORM] = "layer_norm", [PC_OPC_DROPOUT] = "dropout",
        [PC_OPC_EMBEDDING] = "embedding", [PC_OPC_TO] = "to", [PC_OPC_CLONE] = "clone",
        [PC_OPC_DETACH] = "detach", [PC_OPC_CONTIGUOUS] = "contiguous",
        [PC_OPC_COPY_] = "copy_", [PC_OPC_FILL_] = "fill_", [PC_OPC_ZERO_] = "zero_",
        [PC_OPC_PYFUNC] = "custom_function",
    };
    if ((c->opc == PC_OPC_UNARY || c->opc == PC_OPC_UNARY_) && c->ints[0] >= 0 &&
        c->ints[0] < PC_NUM_UNARY)
        return pc_unary_op_name((PcUnaryOp)c->ints[0]);
    if ((c->opc == PC_OPC_BINARY || c->opc == PC_OPC_BINARY_) && c->ints[0] >= 0 &&
        c->ints[0] < PC_NUM_BINARY)
        return pc_binary_op_name((PcBinaryOp)c->ints[0]);
    if ((int)c->opc < 0 || c->opc >= PC_NUM_OPCODES) return "?";
    return names[c->opc];
}

bool pc_call_is_inplace(const PcCall *c) {
    switch (c->opc) {
    case PC_OPC_UNARY_:
    case PC_OPC_BINARY_:
    case PC_OPC_COPY_:
    case PC_OPC_FILL_:
    case PC_OPC_ZERO_: return true;
    default: return false;
    }
}

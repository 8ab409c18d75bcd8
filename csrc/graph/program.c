/* program.c — tracing, replay and splitting of Programs (see program.h).
 *
 * Invariants:
 *   - every slot of a Program has exactly one kind; VALUE slots are written by instructions
 *     (an in-place instruction writes the slot of its first input again);
 *   - during tracing the tracer holds a reference to every tensor in its map, so a freed
 *     tensor's address can never be mistaken for a traced one;
 *   - replay frees each VALUE slot after its last use (outputs are kept).
 */
#include "program.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdarg.h>
#include <string.h>

/* ---- growable arrays ---- */

typedef struct IntVec {
    int n, cap;
    int *v;
} IntVec;

static PcStatus ivec_push(IntVec *iv, int x) {
    PC_TRY(pc_grow_array((void **)&iv->v, &iv->cap, iv->n + 1, sizeof(int), "program"));
    iv->v[iv->n++] = x;
    return PC_OK;
}

/* ---- program construction ---- */

typedef struct ProgBuild {
    PcProgram *p;
    int cap_slots, cap_inputs, cap_ext, cap_out, cap_marks;
} ProgBuild;

static PcStatus prog_new(ProgBuild *b) {
    memset(b, 0, sizeof *b);
    b->p = calloc(1, sizeof(PcProgram));
    if (!b->p) return pc_set_error(PC_ERR_OOM, "out of host memory allocating a program");
    return PC_OK;
}

static PcStatus prog_add_slot(ProgBuild *b, PcSlotKind kind, int *slot) {
    PcProgram *p = b->p;
    int cap = b->cap_slots;
    PC_TRY(pc_grow_array((void **)&p->kind, &cap, p->n_slots + 1, sizeof(PcSlotKind), "program"));
    int cap2 = b->cap_slots;
    PC_TRY(pc_grow_array((void **)&p->konst, &cap2, p->n_slots + 1, sizeof(PcTensor *), "program"));
    b->cap_slots = cap;
    p->kind[p->n_slots] = kind;
    p->konst[p->n_slots] = NULL;
    *slot = p->n_slots++;
    return PC_OK;
}

static PcStatus prog_add_instr(ProgBuild *b, const PcCall *c, const int *in, const int *out,
                               PcInstr **res) {
    PcProgram *p = b->p;
    PC_TRY(pc_grow_array((void **)&p->instrs, &p->cap_instrs, p->n_instrs + 1, sizeof(PcInstr),
                         "program"));
    PcInstr *ins = &p->instrs[p->n_instrs];
    memset(ins, 0, sizeof *ins);
    ins->call = *c;
    ins->in = malloc(sizeof(int) * (size_t)(c->n_in > 0 ? c->n_in : 1));
    if (!ins->in) return pc_set_error(PC_ERR_OOM, "out of host memory recording a call");
    for (int i = 0; i < c->n_in; i++) ins->in[i] = in[i];
    for (int i = 0; i < PC_INSTR_MAX_OUT; i++) ins->out[i] = i < c->n_out ? out[i] : -1;
    p->n_instrs++;
    if (res) *res = ins;
    return PC_OK;
}

void pc_program_free(PcProgram *p) {
    if (!p) return;
    for (int i = 0; i < p->n_instrs; i++) {
        free(p->instrs[i].in);
        if (p->instrs[i].call.opc == PC_OPC_PYFUNC && p->instrs[i].call.py && p->py_release)
            p->py_release(p->instrs[i].call.py);
    }
    free(p->instrs);
    if (p->konst)
        for (int i = 0; i < p->n_slots; i++) pc_tensor_decref(p->konst[i]);
    if (p->traced_ext)
        for (int i = 0; i < p->n_externals; i++) pc_tensor_decref(p->traced_ext[i]);
    free(p->traced_ext);
    free(p->alias);
    free(p->konst);
    free(p->kind);
    free(p->inputs);
    free(p->externals);
    free(p->outputs);
    free(p->marks);
    free(p);
}

/* ---- tracer ---- */

struct PcTracer {
    ProgBuild b;
    PcTensor **keys; /* open-addressing map tensor -> slot; keys hold references */
    int *vals;
    size_t cap, count;
    IntVec ext;       /* EXTERNAL slots in order of first use */
    PcTensor **ext_t; /* references, parallel to ext */
    int cap_ext_t;
    IntVec inputs, marks;
    bool paused;
    bool shape_read;
    double flops; /* matrix-product flops since the last recorded call */
};

static _Thread_local PcTracer *pc_tls_tracer;

PcTracer *pc_trace_active(void) {
    PcTracer *tr = pc_tls_tracer;
    return tr && !tr->paused ? tr : NULL;
}

bool pc_trace_set_paused(bool paused) {
    PcTracer *tr = pc_tls_tracer;
    if (!tr) return false;
    bool prev = tr->paused;
    tr->paused = paused;
    return prev;
}

static size_t ptr_hash(const void *p, size_t cap) {
    uint64_t x = (uint64_t)(uintptr_t)p;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return (size_t)x & (cap - 1);
}

static int map_get(const PcTracer *tr, const PcTensor *t) {
    if (!tr->cap) return -1;
    for (size_t i = ptr_hash(t, tr->cap);; i = (i + 1) & (tr->cap - 1)) {
        if (!tr->keys[i]) return -1;
        if (tr->keys[i] == t) return tr->vals[i];
    }
}

static PcStatus map_put(PcTracer *tr, PcTensor *t, int slot);

static bool same_ints(int n, const int *a, const int *b) {
    return n == 0 || memcmp(a, b, sizeof(int) * (size_t)n) == 0;
}

/* Small constants (a size turned into a tensor, say) are compared by value, on the host. */
#define SAME_CODE_MAX_CONST_BYTES 65536

static bool same_const_values(PcTensor *a, PcTensor *b) {
    size_t bytes = (size_t)pc_tensor_numel(a) * pc_dtype_size(a->dtype);
    if (bytes > SAME_CODE_MAX_CONST_BYTES) return true; /* dtype and shape only */
    PcDevice cpu = {PC_CPU, 0};
    PcTensor *ha = NULL, *hb = NULL, *ca = NULL, *cb = NULL;
    bool same = pc_op_to(a, a->dtype, cpu, &ha) == PC_OK &&
                pc_op_to(b, b->dtype, cpu, &hb) == PC_OK &&
                pc_op_contiguous(ha, &ca) == PC_OK && pc_op_contiguous(hb, &cb) == PC_OK &&
                memcmp(pc_tensor_data(ca), pc_tensor_data(cb), bytes) == 0;
    if (!same) pc_clear_error(); /* a failed copy counts as different */
    pc_tensor_decref(ha);
    pc_tensor_decref(hb);
    pc_tensor_decref(ca);
    pc_tensor_decref(cb);
    return same;
}

bool pc_program_same_code(const PcProgram *a, const PcProgram *b) {
    if (a->n_slots != b->n_slots || a->n_inputs != b->n_inputs ||
        a->n_externals != b->n_externals || a->n_outputs != b->n_outputs ||
        a->n_instrs != b->n_instrs || a->n_marks != b->n_marks)
        return false;
    if (!same_ints(a->n_inputs, a->inputs, b->inputs) ||
        !same_ints(a->n_externals, a->externals, b->externals) ||
        !same_ints(a->n_outputs, a->outputs, b->outputs) ||
        !same_ints(a->n_marks, a->marks, b->marks))
        return false;
    for (int s = 0; s < a->n_slots; s++) {
        if (a->kind[s] != b->kind[s]) return false;
        const PcTensor *ka = a->konst[s], *kb = b->konst[s];
        if (!ka != !kb) return false;
        if (ka && (ka->dtype != kb->dtype || ka->ndim != kb->ndim ||
                   memcmp(ka->shape, kb->shape, sizeof(int64_t) * (size_t)ka->ndim) != 0 ||
                   !same_const_values(a->konst[s], b->konst[s])))
            return false;
    }
    for (int k = 0; k < a->n_instrs; k++) {
        const PcInstr *x = &a->instrs[k], *y = &b->instrs[k];
        const PcCall *c = &x->call, *d = &y->call;
        if (c->opc != d->opc || c->n_in != d->n_in || c->n_out != d->n_out ||
            c->flag != d->flag || c->pyfn != d->pyfn ||
            memcmp(c->ints, d->ints, sizeof c->ints) != 0 ||
            memcmp(c->sizes, d->sizes, sizeof c->sizes) != 0 ||
            memcmp(c->d, d->d, sizeof c->d) != 0 || !same_ints(c->n_in, x->in, y->in) ||
            memcmp(x->out, y->out, sizeof x->out) != 0)
            return false;
    }
    return true;
}

void pc_trace_note_shape_read(PcTracer *tr, const PcTensor *t) {
    int s = tr ? map_get(tr, t) : -1;
    if (s >= 0 && (tr->b.p->kind[s] == PC_SLOT_INPUT || tr->b.p->kind[s] == PC_SLOT_VALUE))
        tr->shape_read = true;
}

static PcStatus map_rehash(PcTracer *tr, size_t ncap) {
    PcTensor **ok = tr->keys;
    int *ov = tr->vals;
    size_t ocap = tr->cap;
    tr->keys = calloc(ncap, sizeof(PcTensor *));
    tr->vals = calloc(ncap, sizeof(int));
    if (!tr->keys || !tr->vals) {
        free(tr->keys);
        free(tr->vals);
        tr->keys = ok;
        tr->vals = ov;
        return pc_set_error(PC_ERR_OOM, "out of host memory in the tracer");
    }
    tr->cap = ncap;
    tr->count = 0;
    for (size_t i = 0; i < ocap; i++) {
        if (!ok[i]) continue;
        size_t j = ptr_hash(ok[i], ncap);
        while (tr->keys[j]) j = (j + 1) & (ncap - 1);
        tr->keys[j] = ok[i]; /* reference moves */
        tr->vals[j] = ov[i];
        tr->count++;
    }
    free(ok);
    free(ov);
    return PC_OK;
}

/* Insert or update t -> slot; takes a new reference to t on insert. */
static PcStatus map_put(PcTracer *tr, PcTensor *t, int slot) {
    if ((tr->count + 1) * 2 > tr->cap) PC_TRY(map_rehash(tr, tr->cap ? tr->cap * 2 : 64));
    size_t i = ptr_hash(t, tr->cap);
    while (tr->keys[i] && tr->keys[i] != t) i = (i + 1) & (tr->cap - 1);
    if (!tr->keys[i]) {
        pc_tensor_incref(t);
        tr->keys[i] = t;
        tr->count++;
    }
    tr->vals[i] = slot;
    return PC_OK;
}

static void tracer_free(PcTracer *tr) {
    if (!tr) return;
    for (size_t i = 0; i < tr->cap; i++) pc_tensor_decref(tr->keys[i]);
    free(tr->keys);
    free(tr->vals);
    for (int i = 0; i < tr->ext.n; i++) pc_tensor_decref(tr->ext_t[i]);
    free(tr->ext_t);
    free(tr->ext.v);
    free(tr->inputs.v);
    free(tr->marks.v);
    pc_program_free(tr->b.p);
    if (pc_tls_tracer == tr) pc_tls_tracer = NULL;
    free(tr);
}

PcStatus pc_trace_begin(PcTracer **out) {
    *out = NULL;
    if (pc_tls_tracer)
        return pc_set_error(PC_ERR_RUNTIME, "a trace is already active on this thread");
    PcTracer *tr = calloc(1, sizeof *tr);
    if (!tr) return pc_set_error(PC_ERR_OOM, "out of host memory starting a trace");
    PcStatus st = prog_new(&tr->b);
    if (st != PC_OK) {
        free(tr);
        return st;
    }
    pc_tls_tracer = tr;
    *out = tr;
    return PC_OK;
}

void pc_trace_abort(PcTracer *tr) { tracer_free(tr); }

PcStatus pc_trace_input(PcTracer *tr, PcTensor *t) {
    if (map_get(tr, t) >= 0)
        return pc_set_error(PC_ERR_INVALID, "the same tensor was passed twice as a traced input");
    int slot;
    PC_TRY(prog_add_slot(&tr->b, PC_SLOT_INPUT, &slot));
    PC_TRY(map_put(tr, t, slot));
    return ivec_push(&tr->inputs, slot);
}

/* Slot of a tensor used by a recorded call: known, or a new EXTERNAL. */
static PcStatus slot_of_use(PcTracer *tr, PcTensor *t, int *slot) {
    int s = map_get(tr, t);
    if (s >= 0) {
        *slot = s;
        return PC_OK;
    }
    PC_TRY(prog_add_slot(&tr->b, PC_SLOT_EXTERNAL, &s));
    PC_TRY(map_put(tr, t, s));
    PC_TRY(pc_grow_array((void **)&tr->ext_t, &tr->cap_ext_t, tr->ext.n + 1, sizeof(PcTensor *),
                         "program"));
    pc_tensor_incref(t);
    tr->ext_t[tr->ext.n] = t;
    PC_TRY(ivec_push(&tr->ext, s));
    *slot = s;
    return PC_OK;
}

PcStatus pc_trace_record(PcTracer *tr, const PcCall *c, PcTensor *const *in,
                         PcTensor *const *out) {
    int ins[PC_CALL_MAX_IN], outs[PC_INSTR_MAX_OUT];
    if (c->n_in > PC_CALL_MAX_IN || c->n_out > PC_INSTR_MAX_OUT)
        return pc_set_error(PC_ERR_NOTIMPL, "tracing: a call with %d inputs/%d outputs is too "
                                            "large to record", c->n_in, c->n_out);
    for (int i = 0; i < c->n_in; i++) {
        if (!in[i]) {
            ins[i] = -1;
            continue;
        }
        PC_TRY(slot_of_use(tr, in[i], &ins[i]));
    }
    for (int k = 0; k < c->n_out; k++) {
        if (pc_call_is_inplace(c) && k == 0) {
            outs[0] = ins[0];
            continue;
        }
        int s = map_get(tr, out[k]);
        if (s < 0 || tr->b.p->kind[s] != PC_SLOT_VALUE) {
            PC_TRY(prog_add_slot(&tr->b, PC_SLOT_VALUE, &s));
            PC_TRY(map_put(tr, out[k], s));
        }
        outs[k] = s;
    }
    PcInstr *rec;
    PC_TRY(prog_add_instr(&tr->b, c, ins, outs, &rec));
    for (int k = 0; k < c->n_out; k++) rec->out_numel[k] = out[k] ? pc_tensor_numel(out[k]) : 0;
    rec->flops = tr->flops;
    tr->flops = 0.0;
    return PC_OK;
}

PcStatus pc_trace_mark(PcTracer *tr) { return ivec_push(&tr->marks, tr->b.p->n_instrs); }

void pc_trace_count_flops(double flops) {
    if (pc_tls_tracer) pc_tls_tracer->flops += flops;
}

PcStatus pc_program_set_marks(PcProgram *p, int n, const int *marks) {
    for (int i = 0; i < n; i++) {
        if (marks[i] < 0 || marks[i] > p->n_instrs || (i > 0 && marks[i] <= marks[i - 1]))
            return pc_set_error(PC_ERR_INVALID,
                                "split marks must be strictly increasing instruction indices "
                                "in [0, %d]; mark %d is %d", p->n_instrs, i, marks[i]);
    }
    int *v = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    if (!v) return pc_set_error(PC_ERR_OOM, "out of host memory setting split marks");
    if (n) memcpy(v, marks, sizeof(int) * (size_t)n);
    free(p->marks);
    p->marks = v;
    p->n_marks = n;
    return PC_OK;
}

typedef struct SlotStorage {
    const PcStorage *storage;
    int slot;
} SlotStorage;

static int slot_storage_cmp(const void *a, const void *b) {
    const SlotStorage *x = a, *y = b;
    if (x->storage != y->storage) return (uintptr_t)x->storage < (uintptr_t)y->storage ? -1 : 1;
    return (x->slot > y->slot) - (x->slot < y->slot);
}

/* [n_slots] lowest slot on the same storage as each slot's traced tensor (malloc'd; NULL
 * when out of memory: splitting then skips its in-place checks). */
static int *trace_alias_table(const PcTracer *tr, int n_slots) {
    int *alias = malloc(sizeof(int) * (size_t)(n_slots ? n_slots : 1));
    SlotStorage *pairs = malloc(sizeof(SlotStorage) * (tr->count ? tr->count : 1));
    if (!alias || !pairs) {
        free(alias);
        free(pairs);
        return NULL;
    }
    for (int s = 0; s < n_slots; s++) alias[s] = s;
    size_t n = 0;
    for (size_t i = 0; i < tr->cap && n < tr->count; i++)
        if (tr->keys[i] && tr->vals[i] >= 0 && tr->vals[i] < n_slots)
            pairs[n++] = (SlotStorage){tr->keys[i]->storage, tr->vals[i]};
    qsort(pairs, n, sizeof *pairs, slot_storage_cmp);
    for (size_t i = 1; i < n; i++)
        if (pairs[i].storage == pairs[i - 1].storage) {
            int root = alias[pairs[i - 1].slot];
            if (root < alias[pairs[i].slot]) alias[pairs[i].slot] = root;
        }
    free(pairs);
    return alias;
}

PcStatus pc_trace_end(PcTracer *tr, int n_out, PcTensor *const *outs, PcProgram **out) {
    *out = NULL;
    PcStatus st = PC_OK;
    IntVec ov = {0, 0, NULL};
    for (int i = 0; i < n_out && st == PC_OK; i++) {
        int s;
        st = slot_of_use(tr, outs[i], &s);
        if (st == PC_OK) st = ivec_push(&ov, s);
    }
    if (st != PC_OK) {
        free(ov.v);
        tracer_free(tr);
        return st;
    }
    PcProgram *p = tr->b.p;
    p->n_inputs = tr->inputs.n;
    p->inputs = tr->inputs.v;
    tr->inputs.v = NULL;
    p->n_externals = tr->ext.n;
    p->externals = tr->ext.v;
    p->traced_ext = tr->ext_t;
    tr->ext.v = NULL;
    tr->ext_t = NULL;
    tr->ext.n = 0;
    p->n_outputs = ov.n;
    p->outputs = ov.v;
    p->n_marks = tr->marks.n;
    p->marks = tr->marks.v;
    p->reads_shapes = tr->shape_read;
    p->alias = trace_alias_table(tr, p->n_slots);
    tr->marks.v = NULL;
    tr->b.p = NULL;
    tracer_free(tr);
    *out = p;
    return PC_OK;
}

/* ---- programs ---- */

PcTensor *pc_program_external_tensor(const PcProgram *p, int i) {
    if (!p->traced_ext || i < 0 || i >= p->n_externals) return NULL;
    return p->traced_ext[i];
}

PcStatus pc_program_make_const(PcProgram *p, int i) {
    PC_CHECK(i >= 0 && i < p->n_externals && p->traced_ext && p->traced_ext[i], PC_ERR_INVALID,
             "make_const: no traced external %d", i);
    int slot = p->externals[i];
    p->kind[slot] = PC_SLOT_CONST;
    p->konst[slot] = p->traced_ext[i]; /* reference moves */
    for (int k = i; k + 1 < p->n_externals; k++) {
        p->externals[k] = p->externals[k + 1];
        p->traced_ext[k] = p->traced_ext[k + 1];
    }
    p->n_externals--;
    return PC_OK;
}

PcStatus pc_program_consts_to(PcProgram *p, PcDevice dev) {
    for (int s = 0; s < p->n_slots; s++) {
        if (!p->konst[s]) continue;
        PcTensor *moved;
        PC_TRY(pc_op_to(p->konst[s], p->konst[s]->dtype, dev, &moved));
        pc_tensor_decref(p->konst[s]);
        p->konst[s] = moved;
    }
    return PC_OK;
}

PcStatus pc_program_run(const PcProgram *p, PcTensor *const *inputs,
                        PcTensor *const *externals, PcTensor **outputs) {
    PcStatus st = PC_OK;
    PcTensor **env = calloc((size_t)(p->n_slots ? p->n_slots : 1), sizeof(PcTensor *));
    int *last = malloc(sizeof(int) * (size_t)(p->n_slots ? p->n_slots : 1));
    bool *owned = calloc((size_t)(p->n_slots ? p->n_slots : 1), sizeof(bool));
    if (!env || !last || !owned) {
        free(env);
        free(last);
        free(owned);
        return pc_set_error(PC_ERR_OOM, "out of host memory running a program");
    }
    for (int s = 0; s < p->n_slots; s++) last[s] = -1;
    for (int k = 0; k < p->n_instrs; k++)
        for (int i = 0; i < p->instrs[k].call.n_in; i++)
            if (p->instrs[k].in[i] >= 0) last[p->instrs[k].in[i]] = k;
    for (int o = 0; o < p->n_outputs; o++) last[p->outputs[o]] = p->n_instrs;
    for (int i = 0; i < p->n_inputs; i++) {
        pc_tensor_incref(inputs[i]);
        env[p->inputs[i]] = inputs[i];
    }
    for (int i = 0; i < p->n_externals; i++) {
        pc_tensor_incref(externals[i]);
        env[p->externals[i]] = externals[i];
    }
    for (int s = 0; s < p->n_slots; s++) {
        if (p->konst[s]) {
            pc_tensor_incref(p->konst[s]);
            env[s] = p->konst[s];
        }
    }
    PcTensor *ins[PC_CALL_MAX_IN];
    for (int k = 0; k < p->n_instrs && st == PC_OK; k++) {
        const PcInstr *in = &p->instrs[k];
        for (int i = 0; i < in->call.n_in; i++) {
            int s = in->in[i];
            ins[i] = s >= 0 ? env[s] : NULL;
            if (s >= 0 && !ins[i]) {
                st = pc_set_error(PC_ERR_RUNTIME, "program: slot %%%d used before it is defined "
                                                  "(instruction %d, %s)", s, k,
                                  pc_call_name(&in->call));
                break;
            }
        }
        if (st != PC_OK) break;
        if (pc_call_is_inplace(&in->call) && in->in[0] >= 0) {
            /* functionalise writes into caller-owned inputs and constants: the first in-place
             * write works on a (differentiable) copy, so replay never mutates what the caller
             * passed (a stage input may be an autograd leaf) or the Program's constants */
            int s0 = in->in[0];
            if (p->kind[s0] == PC_SLOT_INPUT || p->kind[s0] == PC_SLOT_CONST) {
                if (!owned[s0]) {
                    PcTensor *copy;
                    st = pc_op_clone(env[s0], &copy);
                    if (st != PC_OK) break;
                    pc_tensor_decref(env[s0]);
                    env[s0] = copy;
                    owned[s0] = true;
                }
                ins[0] = env[s0];
            }
        }
        PcTensor *outs[PC_INSTR_MAX_OUT] = {NULL};
        st = pc_call_run(&in->call, ins, outs);
        if (st != PC_OK) break;
        for (int o = 0; o < in->call.n_out; o++) {
            int s = in->out[o];
            pc_tensor_decref(env[s]);
            env[s] = outs[o];
        }
        for (int i = 0; i < in->call.n_in; i++) {
            int s = in->in[i];
            if (s >= 0 && last[s] == k && p->kind[s] == PC_SLOT_VALUE) {
                pc_tensor_decref(env[s]);
                env[s] = NULL;
            }
        }
    }
    if (st == PC_OK) {
        for (int o = 0; o < p->n_outputs; o++) {
            PcTensor *t = env[p->outputs[o]];
            if (!t) {
                st = pc_set_error(PC_ERR_RUNTIME, "program: output slot %%%d is undefined",
                                  p->outputs[o]);
                for (int j = 0; j < o; j++) {
                    pc_tensor_decref(outputs[j]);
                    outputs[j] = NULL;
                }
                break;
            }
            pc_tensor_incref(t);
            outputs[o] = t;
        }
    }
    for (int s = 0; s < p->n_slots; s++) pc_tensor_decref(env[s]);
    free(env);
    free(last);
    free(owned);
    return st;
}

/* ---- splitting ---- */

void pc_stage_io_free(int n, PcStageIO *io) {
    if (!io) return;
    for (int i = 0; i < n; i++) {
        free(io[i].in);
        free(io[i].ext);
        free(io[i].out);
    }
    free(io);
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Add x to a sorted-unique set. */
static PcStatus set_add(IntVec *v, int x) {
    for (int i = 0; i < v->n; i++)
        if (v->v[i] == x) return PC_OK;
    PC_TRY(ivec_push(v, x));
    qsort(v->v, (size_t)v->n, sizeof(int), cmp_int);
    return PC_OK;
}

/* ---- in-place writes across cuts ---- */

int pc_program_cut_loses_write(const PcProgram *p, const int *stage_of, int *other) {
    *other = -1;
    if (!p->alias || p->n_instrs == 0) return -1;
    int ns = p->n_slots;
    size_t sz = sizeof(int) * (size_t)(ns ? ns : 1);
    int *made = malloc(sz);      /* stage making a value (-1: parameter, buffer, constant) */
    int *last_read = malloc(sz); /* instruction reading a slot last (n_instrs: an output) */
    /* per alias group (indexed by its root): members, whether one is a parameter, buffer or
     * constant, and the first and last stage reading any member */
    int *members = calloc((size_t)(ns ? ns : 1), sizeof(int));
    int *param = calloc((size_t)(ns ? ns : 1), sizeof(int));
    int *read_lo = malloc(sz), *read_hi = malloc(sz);
    int found = -1;
    if (!made || !last_read || !members || !param || !read_lo || !read_hi)
        goto out; /* out of memory: no check (the split itself reports it) */
    for (int s = 0; s < ns; s++) {
        made[s] = p->kind[s] == PC_SLOT_INPUT ? 0 : -1; /* model inputs enter at stage 0 */
        last_read[s] = -1;
        read_lo[s] = INT_MAX;
        read_hi[s] = -1;
        members[p->alias[s]]++;
        if (p->kind[s] == PC_SLOT_EXTERNAL || p->kind[s] == PC_SLOT_CONST) param[p->alias[s]] = 1;
    }
    for (int k = 0; k < p->n_instrs; k++) {
        const PcInstr *in = &p->instrs[k];
        for (int i = 0; i < in->call.n_in; i++) {
            int s = in->in[i];
            if (s < 0) continue;
            last_read[s] = k;
            int r = p->alias[s];
            if (stage_of[k] < read_lo[r]) read_lo[r] = stage_of[k];
            if (stage_of[k] > read_hi[r]) read_hi[r] = stage_of[k];
        }
        for (int o = 0; o < in->call.n_out; o++)
            if (in->out[o] >= 0 && made[in->out[o]] < 0 && p->kind[in->out[o]] == PC_SLOT_VALUE)
                made[in->out[o]] = stage_of[k];
    }
    for (int i = 0; i < p->n_outputs; i++) last_read[p->outputs[i]] = p->n_instrs;
    for (int k = 0; k < p->n_instrs && found < 0; k++) {
        const PcInstr *in = &p->instrs[k];
        if (!pc_call_is_inplace(&in->call) || in->call.n_in < 1 || in->in[0] < 0) continue;
        int t = in->in[0], root = p->alias[t], here = stage_of[k];
        if (param[root]) {
            /* another stage using the parameter/buffer (or a view of it) has its own copy */
            if (read_lo[root] != here || read_hi[root] != here) {
                found = k;
                for (int s = 0; s < ns && *other < 0; s++)
                    if (p->alias[s] == root && (p->kind[s] == PC_SLOT_EXTERNAL ||
                                                p->kind[s] == PC_SLOT_CONST))
                        *other = s;
            }
            continue;
        }
        if (members[root] < 2) continue; /* no other alias to miss the write */
        bool t_crossed = made[t] < 0 || made[t] < here;
        for (int s = 0; s < ns && found < 0; s++) {
            if (p->alias[s] != root || s == t || made[s] < 0 || made[s] >= here ||
                last_read[s] <= k)
                continue;
            /* s came from an earlier stage. When t came from one too, this stage holds
             * separate copies of both: s misses the write. When t was made here (a view of
             * this stage's copy of s), this stage sees the write, but a later stage reading
             * s (or the model's output) gets it from the stage that made it */
            bool later = last_read[s] >= p->n_instrs || stage_of[last_read[s]] > here;
            if (t_crossed || later) {
                found = k;
                *other = s;
            }
        }
    }
out:
    free(made);
    free(last_read);
    free(members);
    free(param);
    free(read_lo);
    free(read_hi);
    return found;
}

PcStatus pc_program_split(const PcProgram *p, int *n_stages_out, PcProgram ***stages_out,
                          PcStageIO **io_out) {
    *n_stages_out = 0;
    *stages_out = NULL;
    *io_out = NULL;
    PcStatus st = PC_OK;
    int n_raw = p->n_marks + 1;
    int *raw_stage = malloc(sizeof(int) * (size_t)(p->n_instrs ? p->n_instrs : 1));
    int *remap = calloc((size_t)n_raw, sizeof(int));
    if (!raw_stage || !remap) {
        free(raw_stage);
        free(remap);
        return pc_set_error(PC_ERR_OOM, "out of host memory splitting a program");
    }
    /* stage of each instruction; drop empty stages */
    int *count = calloc((size_t)n_raw, sizeof(int));
    if (!count) {
        free(raw_stage);
        free(remap);
        return pc_set_error(PC_ERR_OOM, "out of host memory splitting a program");
    }
    for (int k = 0, m = 0; k < p->n_instrs; k++) {
        while (m < p->n_marks && p->marks[m] <= k) m++;
        raw_stage[k] = m;
        count[m]++;
    }
    int ns = 0;
    for (int r = 0; r < n_raw; r++) remap[r] = count[r] ? ns++ : -1;
    free(count);
    if (ns == 0) ns = 1; /* an empty program is one empty stage */
    int *stage_of = raw_stage;
    for (int k = 0; k < p->n_instrs; k++) stage_of[k] = remap[raw_stage[k]];
    free(remap);
    int lost_other;
    int lost = pc_program_cut_loses_write(p, stage_of, &lost_other);
    if (lost >= 0) {
        int lost_stage = stage_of[lost];
        free(raw_stage);
        return pc_set_error(
            PC_ERR_INVALID,
            "pipeline split: instruction %d (%s, stage %d) writes in place into memory it "
            "shares with %s (slot %%%d), and the stage boundaries give each stage its own "
            "copy, so the write would be lost; move the split point so that the value, its "
            "views and the in-place write stay in one stage, or write out of place "
            "(x = x * y rather than x.mul_(y))",
            lost, pc_call_name(&p->instrs[lost].call), lost_stage,
            p->kind[lost_other] == PC_SLOT_EXTERNAL || p->kind[lost_other] == PC_SLOT_CONST
                ? "a parameter or buffer that another stage also uses"
                : "a value made in an earlier stage and read after the write",
            lost_other);
    }

    IntVec *in = calloc((size_t)ns, sizeof(IntVec));
    IntVec *ext = calloc((size_t)ns, sizeof(IntVec));
    IntVec *outv = calloc((size_t)ns, sizeof(IntVec));
    int *def = malloc(sizeof(int) * (size_t)(p->n_slots ? p->n_slots : 1));
    PcProgram **stages = calloc((size_t)ns, sizeof(PcProgram *));
    PcStageIO *io = calloc((size_t)ns, sizeof(PcStageIO));
    int *map = malloc(sizeof(int) * (size_t)(p->n_slots ? p->n_slots : 1));
    if (!in || !ext || !outv || !def || !stages || !io || !map) {
        st = pc_set_error(PC_ERR_OOM, "out of host memory splitting a program");
        goto fail;
    }
    /* wiring: walk instructions, tracking the stage that last wrote each slot */
    for (int s = 0; s < p->n_slots; s++) def[s] = -1;
    for (int k = 0; k < p->n_instrs; k++) {
        const PcInstr *ins = &p->instrs[k];
        int sg = stage_of[k];
        for (int i = 0; i < ins->call.n_in; i++) {
            int s = ins->in[i];
            if (s < 0) continue;
            switch (p->kind[s]) {
            case PC_SLOT_INPUT:
                if (def[s] >= 0 && def[s] != sg) {
                    PC_TRY_GOTO(st, set_add(&outv[def[s]], s));
                    PC_TRY_GOTO(st, set_add(&in[sg], s));
                } else if (def[s] < 0) {
                    PC_TRY_GOTO(st, set_add(&in[sg], s));
                }
                break;
            case PC_SLOT_EXTERNAL: PC_TRY_GOTO(st, set_add(&ext[sg], s)); break;
            case PC_SLOT_CONST: break;
            case PC_SLOT_VALUE:
                if (def[s] < 0) {
                    st = pc_set_error(PC_ERR_RUNTIME, "split: slot %%%d used before definition", s);
                    goto fail;
                }
                if (def[s] != sg) {
                    PC_TRY_GOTO(st, set_add(&outv[def[s]], s));
                    PC_TRY_GOTO(st, set_add(&in[sg], s));
                }
                break;
            }
        }
        for (int o = 0; o < ins->call.n_out; o++) def[ins->out[o]] = sg;
    }
    for (int o = 0; o < p->n_outputs; o++) {
        int s = p->outputs[o];
        if (def[s] >= 0) {
            PC_TRY_GOTO(st, set_add(&outv[def[s]], s));
            if (def[s] != ns - 1) { /* made earlier: passed through the last stage, whose
                                       outputs are the model's outputs */
                PC_TRY_GOTO(st, set_add(&in[ns - 1], s));
                PC_TRY_GOTO(st, set_add(&outv[ns - 1], s));
            }
        } else if (p->kind[s] == PC_SLOT_INPUT) {
            PC_TRY_GOTO(st, set_add(&in[ns - 1], s));
            PC_TRY_GOTO(st, set_add(&outv[ns - 1], s));
        } else {
            st = pc_set_error(PC_ERR_NOTIMPL,
                              "split: a model output that is a parameter, buffer or constant "
                              "is not supported");
            goto fail;
        }
    }
    /* build each stage */
    for (int sg = 0; sg < ns; sg++) {
        ProgBuild b;
        PC_TRY_GOTO(st, prog_new(&b));
        stages[sg] = b.p;
        b.p->py_release = p->py_release;
        b.p->py_retain = p->py_retain;
        b.p->reads_shapes = p->reads_shapes;
        for (int s = 0; s < p->n_slots; s++) map[s] = -1;
        IntVec vin = {0, 0, NULL}, vext = {0, 0, NULL}, vout = {0, 0, NULL};
        for (int i = 0; i < in[sg].n; i++) {
            int ns_;
            PC_TRY_GOTO(st, prog_add_slot(&b, PC_SLOT_INPUT, &ns_));
            map[in[sg].v[i]] = ns_;
            PC_TRY_GOTO(st, ivec_push(&vin, ns_));
        }
        for (int i = 0; i < ext[sg].n; i++) {
            int ns_;
            PC_TRY_GOTO(st, prog_add_slot(&b, PC_SLOT_EXTERNAL, &ns_));
            map[ext[sg].v[i]] = ns_;
            PC_TRY_GOTO(st, ivec_push(&vext, ns_));
        }
        b.p->n_inputs = vin.n;
        b.p->inputs = vin.v;
        b.p->n_externals = vext.n;
        b.p->externals = vext.v;
        for (int k = 0; k < p->n_instrs; k++) {
            if (stage_of[k] != sg) continue;
            const PcInstr *ins = &p->instrs[k];
            int ii[PC_CALL_MAX_IN], oo[PC_INSTR_MAX_OUT];
            for (int i = 0; i < ins->call.n_in; i++) {
                int s = ins->in[i];
                if (s < 0) {
                    ii[i] = -1;
                    continue;
                }
                if (map[s] < 0 && p->kind[s] == PC_SLOT_CONST) {
                    PC_TRY_GOTO(st, prog_add_slot(&b, PC_SLOT_CONST, &map[s]));
                    pc_tensor_incref(p->konst[s]);
                    b.p->konst[map[s]] = p->konst[s];
                }
                ii[i] = map[s];
            }
            for (int o = 0; o < ins->call.n_out; o++) {
                int s = ins->out[o];
                if (pc_call_is_inplace(&ins->call) && o == 0) {
                    oo[0] = ii[0];
                    map[s] = ii[0];
                    continue;
                }
                PC_TRY_GOTO(st, prog_add_slot(&b, PC_SLOT_VALUE, &map[s]));
                oo[o] = map[s];
            }
            PcInstr *ni;
            PC_TRY_GOTO(st, prog_add_instr(&b, &ins->call, ii, oo, &ni));
            memcpy(ni->out_numel, ins->out_numel, sizeof ni->out_numel);
            ni->flops = ins->flops;
            if (ni->call.opc == PC_OPC_PYFUNC && ni->call.py && p->py_retain)
                p->py_retain(ni->call.py);
        }
        for (int i = 0; i < outv[sg].n; i++) PC_TRY_GOTO(st, ivec_push(&vout, map[outv[sg].v[i]]));
        b.p->n_outputs = vout.n;
        b.p->outputs = vout.v;
        io[sg].n_in = in[sg].n;
        io[sg].in = in[sg].v;
        in[sg].v = NULL;
        io[sg].n_ext = ext[sg].n;
        io[sg].ext = ext[sg].v;
        ext[sg].v = NULL;
        io[sg].n_out = outv[sg].n;
        io[sg].out = outv[sg].v;
        outv[sg].v = NULL;
    }
    *n_stages_out = ns;
    *stages_out = stages;
    *io_out = io;
    stages = NULL;
    io = NULL;
fail:
    if (in)
        for (int i = 0; i < ns; i++) free(in[i].v);
    if (ext)
        for (int i = 0; i < ns; i++) free(ext[i].v);
    if (outv)
        for (int i = 0; i < ns; i++) free(outv[i].v);
    free(in);
    free(ext);
    free(outv);
    free(def);
    free(map);
    free(stage_of);
    if (stages)
        for (int i = 0; i < ns; i++) pc_program_free(stages[i]);
    free(stages);
    pc_stage_io_free(io ? ns : 0, io);
    return st;
}

/* ---- formatting ---- */

typedef struct StrBuf {
    char *s;
    size_t n, cap;
} StrBuf;

static void sb_printf(StrBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(StrBuf *b, const char *fmt, ...) {
    va_list ap;
    for (;;) {
        size_t room = b->cap - b->n;
        va_start(ap, fmt);
        int w = b->s ? vsnprintf(b->s + b->n, room, fmt, ap) : -1;
        va_end(ap);
        if (w >= 0 && (size_t)w < room) {
            b->n += (size_t)w;
            return;
        }
        size_t nc = b->cap ? b->cap * 2 : 1024;
        while (w >= 0 && nc < b->n + (size_t)w + 1) nc *= 2;
        char *p = realloc(b->s, nc);
        if (!p) return;
        b->s = p;
        b->cap = nc;
    }
}

char *pc_program_format(const PcProgram *p) {
    StrBuf b = {NULL, 0, 0};
    static const char *kinds[] = {"value", "input", "param", "const"};
    sb_printf(&b, "program(");
    for (int i = 0; i < p->n_inputs; i++) sb_printf(&b, "%s%%%d", i ? ", " : "", p->inputs[i]);
    sb_printf(&b, ")");
    if (p->n_externals) {
        sb_printf(&b, " params(");
        for (int i = 0; i < p->n_externals; i++)
            sb_printf(&b, "%s%%%d", i ? ", " : "", p->externals[i]);
        sb_printf(&b, ")");
    }
    sb_printf(&b, ":\n");
    int m = 0;
    for (int k = 0; k < p->n_instrs; k++) {
        while (m < p->n_marks && p->marks[m] == k) {
            sb_printf(&b, "    ---- pipe_split ----\n");
            m++;
        }
        const PcInstr *in = &p->instrs[k];
        sb_printf(&b, "    ");
        for (int o = 0; o < in->call.n_out; o++) sb_printf(&b, "%s%%%d", o ? ", " : "", in->out[o]);
        sb_printf(&b, " = %s(", pc_call_name(&in->call));
        for (int i = 0; i < in->call.n_in; i++) {
            int s = in->in[i];
            if (s < 0)
                sb_printf(&b, "%sNone", i ? ", " : "");
            else
                sb_printf(&b, "%s%%%d%s", i ? ", " : "", s,
                          p->kind[s] == PC_SLOT_VALUE || p->kind[s] == PC_SLOT_INPUT
                              ? ""
                              : (p->kind[s] == PC_SLOT_CONST ? "[const]" : "[param]"));
        }
        sb_printf(&b, ")\n");
    }
    sb_printf(&b, "    return (");
    for (int o = 0; o < p->n_outputs; o++) sb_printf(&b, "%s%%%d", o ? ", " : "", p->outputs[o]);
    sb_printf(&b, ")\n");
    (void)kinds;
    return b.s;
}

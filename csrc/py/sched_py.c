/* sched_py.c — pipec._C bindings of the schedule layer (csrc/sched/): `_sched_*` functions.
 *
 * Orders cross the boundary as Python lists (one per rank) of action strings, None for an
 * idle slot. Inputs may also hold any object whose str() is an action string (pipec's
 * _Action). Errors come from the C layer's status through pc_py_raise (ValueError for bad
 * schedules and arguments, RuntimeError for unparsable action text).
 *
 * Exports: int pc_py_add_sched(PyObject *module) (declared in pyapi.h).
 */
#include "pyapi.h"

#include <string.h>

#include "../sched/action.h"
#include "../sched/generators.h"
#include "../sched/lower.h"
#include "../sched/simulate.h"
#include "../sched/validate.h"

/* ---- conversions ---- */

/* New reference: the text of a (None for idle). */
static PyObject *pc_py_action_str(const PcAction *a) {
    if (a->type == PC_ACT_IDLE) Py_RETURN_NONE;
    char txt[PC_ACTION_TEXT_MAX];
    int n = pc_action_format(a, txt, sizeof txt);
    return PyUnicode_FromStringAndSize(txt, n < (int)sizeof txt ? n : (int)sizeof txt - 1);
}

/* New reference: list of action strings / None. */
static PyObject *pc_py_list_from_actions(const PcActionList *l) {
    PyObject *row = PyList_New(l->len);
    if (!row) return NULL;
    for (int32_t i = 0; i < l->len; i++) {
        PyObject *s = pc_py_action_str(&l->items[i]);
        if (!s) {
            Py_DECREF(row);
            return NULL;
        }
        PyList_SET_ITEM(row, i, s); /* steals s */
    }
    return row;
}

/* New reference: list (per rank) of lists. */
static PyObject *pc_py_order_from_sched(const PcSchedule *s) {
    PyObject *out = PyList_New(s->n_ranks);
    if (!out) return NULL;
    for (int32_t r = 0; r < s->n_ranks; r++) {
        PyObject *row = pc_py_list_from_actions(&s->ranks[r]);
        if (!row) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, r, row);
    }
    return out;
}

/* Parse one item (borrowed) into *a. 0, or -1 with an exception set. */
static int pc_py_parse_item(PyObject *item, PcAction *a) {
    if (item == Py_None) {
        *a = pc_action_idle();
        return 0;
    }
    PyObject *text = PyUnicode_Check(item) ? Py_NewRef(item) : PyObject_Str(item);
    if (!text) return -1;
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(text, &len);
    if (!s) {
        Py_DECREF(text);
        return -1;
    }
    PcStatus st = pc_action_parse_n(s, (size_t)len, a);
    Py_DECREF(text);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    return 0;
}

/* Sequence (borrowed) of items into *l (initialised here). 0, or -1 with an exception set. */
static int pc_py_list_to_actions(PyObject *seq_obj, const char *what, PcActionList *l) {
    pc_action_list_init(l);
    PyObject *seq = PySequence_Fast(seq_obj, what);
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        PcAction a;
        if (pc_py_parse_item(PySequence_Fast_GET_ITEM(seq, i), &a) < 0) goto fail;
        PcStatus st = pc_action_list_push(l, a);
        if (st != PC_OK) {
            pc_py_raise(st);
            goto fail;
        }
    }
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    pc_action_list_free(l);
    return -1;
}

/* Order (borrowed: a sequence of per-rank sequences) into *s (initialised here). */
static int pc_py_order_to_sched(PyObject *order, PcSchedule *s) {
    PyObject *seq = PySequence_Fast(order, "schedule order must be a sequence of per-rank lists");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n > INT32_MAX) {
        Py_DECREF(seq);
        PyErr_SetString(PyExc_ValueError, "schedule order has too many ranks");
        return -1;
    }
    PcStatus st = pc_schedule_init(s, (int32_t)n);
    if (st != PC_OK) {
        Py_DECREF(seq);
        pc_py_raise(st);
        return -1;
    }
    for (Py_ssize_t r = 0; r < n; r++) {
        if (pc_py_list_to_actions(PySequence_Fast_GET_ITEM(seq, r),
                                  "each rank of a schedule order must be a sequence of actions",
                                  &s->ranks[r]) < 0) {
            Py_DECREF(seq);
            pc_schedule_free(s);
            return -1;
        }
    }
    Py_DECREF(seq);
    return 0;
}

/* Optional stage->rank list (borrowed, may be None) into a malloc'd int array of n_stages
 * entries (*out NULL when None). 0, or -1 with an exception set. */
static int pc_py_stage_map(PyObject *obj, int *n_stages, int **out) {
    *out = NULL;
    if (obj == NULL || obj == Py_None) return 0;
    PyObject *seq = PySequence_Fast(obj, "stage_to_rank must be a sequence of ints (rank of each stage)");
    if (!seq) return -1;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (*n_stages <= 0) *n_stages = (int)n;
    if (n < *n_stages || n > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "stage_to_rank has %zd entries, expected %d", n, *n_stages);
        Py_DECREF(seq);
        return -1;
    }
    int *map = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(int));
    if (!map) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (v == -1 && PyErr_Occurred()) {
            PyMem_Free(map);
            Py_DECREF(seq);
            return -1;
        }
        map[i] = (int)v;
    }
    Py_DECREF(seq);
    *out = map;
    return 0;
}

static int pc_py_kind(const char *name, PcSchedKind *k) {
    PcStatus st = pc_sched_kind_from_name(name, k);
    if (st != PC_OK) {
        pc_py_raise(st);
        return -1;
    }
    return 0;
}

/* ---- generators ---- */

/* _sched_names() -> list[str]; new reference. */
static PyObject *pc_py_sched_names(PyObject *mod, PyObject *noargs) {
    (void)mod;
    (void)noargs;
    PyObject *out = PyList_New(PC_SCHED_KIND_COUNT);
    if (!out) return NULL;
    for (int k = 0; k < PC_SCHED_KIND_COUNT; k++) {
        PyObject *s = PyUnicode_FromString(pc_sched_kind_name((PcSchedKind)k));
        if (!s) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, k, s);
    }
    return out;
}

/* _sched_info(name) -> (canonical name, is_multi, default stages per rank, style); new ref. */
static PyObject *pc_py_sched_info(PyObject *mod, PyObject *args) {
    (void)mod;
    const char *name;
    PcSchedKind k;
    if (!PyArg_ParseTuple(args, "s:_sched_info", &name)) return NULL;
    if (pc_py_kind(name, &k) < 0) return NULL;
    return Py_BuildValue("(sNis)", pc_sched_kind_name(k), PyBool_FromLong(pc_sched_kind_is_multi(k)),
                         pc_sched_default_stages_per_rank(k),
                         pc_sched_kind_style(k) == PC_STAGE_V ? "v" : "loop");
}

/* _sched_check(name, pp, stages_per_rank, n_microbatches) -> None; raises ValueError. */
static PyObject *pc_py_sched_check(PyObject *mod, PyObject *args) {
    (void)mod;
    const char *name;
    int pp, spr, n;
    PcSchedKind k;
    if (!PyArg_ParseTuple(args, "siii:_sched_check", &name, &pp, &spr, &n)) return NULL;
    if (pc_py_kind(name, &k) < 0) return NULL;
    PcStatus st = pc_sched_check(k, pp, spr, n);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

/* _sched_generate(name, pp, stages_per_rank, n_microbatches, fix_1f1b=False, rank=-1)
 * -> list per rank (or one rank's list when rank >= 0); new reference. */
static PyObject *pc_py_sched_generate(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"name", "pp", "stages_per_rank", "n_microbatches", "fix_1f1b", "rank", NULL};
    const char *name;
    int pp, spr, n, fix = 0, rank = -1;
    PcSchedKind k;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "siii|pi:_sched_generate", kwlist, &name, &pp, &spr, &n,
                                     &fix, &rank))
        return NULL;
    if (pc_py_kind(name, &k) < 0) return NULL;
    unsigned flags = fix ? PC_SCHED_FIX_1F1B_NUMBERING : 0u;
    PcStatus st;
    PyObject *out;
    if (rank >= 0) {
        PcActionList l;
        st = pc_sched_generate_rank(k, pp, spr, n, rank, flags, &l);
        if (st != PC_OK) return pc_py_raise(st);
        out = pc_py_list_from_actions(&l);
        pc_action_list_free(&l);
        return out;
    }
    PcSchedule s;
    st = pc_sched_generate(k, pp, spr, n, flags, &s);
    if (st != PC_OK) return pc_py_raise(st);
    out = pc_py_order_from_sched(&s);
    pc_schedule_free(&s);
    return out;
}

/* _sched_stage_to_rank(style "loop"|"v", pp, n_stages) -> list[int]; new reference. */
static PyObject *pc_py_sched_stage_to_rank(PyObject *mod, PyObject *args) {
    (void)mod;
    const char *style;
    int pp, n_stages;
    if (!PyArg_ParseTuple(args, "sii:_sched_stage_to_rank", &style, &pp, &n_stages)) return NULL;
    PcStageStyle st;
    if (strcmp(style, "loop") == 0) {
        st = PC_STAGE_LOOP;
    } else if (strcmp(style, "v") == 0) {
        st = PC_STAGE_V;
    } else {
        return PyErr_Format(PyExc_ValueError, "Style %s is not supported (expected 'loop' or 'v').", style);
    }
    if (pp < 1 || n_stages < 0)
        return PyErr_Format(PyExc_ValueError, "stage_to_rank: need pp >= 1 and n_stages >= 0, got %d, %d",
                            pp, n_stages);
    if (st == PC_STAGE_V && n_stages % pp != 0)
        return PyErr_Format(PyExc_ValueError,
                            "num_stages %d must be evenly divisible by pp_size %d for V schedules",
                            n_stages, pp);
    PyObject *out = PyList_New(n_stages);
    if (!out) return NULL;
    for (int s = 0; s < n_stages; s++) {
        PyObject *v = PyLong_FromLong(pc_sched_stage_to_rank(st, pp, n_stages, s));
        if (!v) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, s, v);
    }
    return out;
}

/* ---- actions ---- */

/* _sched_parse_action(text) -> None | (stage, type, mb|None, subs|None), subs a tuple of
 * (stage, type, mb|None); new reference. RuntimeError for invalid text. */
static PyObject *pc_py_sched_parse_action(PyObject *mod, PyObject *arg) {
    (void)mod;
    if (!PyUnicode_Check(arg)) return PyErr_Format(PyExc_TypeError, "action must be a str, not %.100s",
                                                   Py_TYPE(arg)->tp_name);
    PcAction a;
    if (pc_py_parse_item(arg, &a) < 0) return NULL;
    if (a.type == PC_ACT_IDLE) Py_RETURN_NONE;
    PyObject *subs = Py_None;
    Py_INCREF(subs);
    if (a.n_sub > 0) {
        Py_DECREF(subs);
        subs = PyTuple_New(a.n_sub);
        if (!subs) return NULL;
        for (int i = 0; i < a.n_sub; i++) {
            PyObject *mb = a.sub[i].mb >= 0 ? PyLong_FromLong(a.sub[i].mb) : Py_NewRef(Py_None);
            PyObject *t = mb ? Py_BuildValue("(isN)", (int)a.sub[i].stage, pc_act_type_name(a.sub[i].type), mb)
                             : NULL;
            if (!t) {
                Py_DECREF(subs);
                return NULL;
            }
            PyTuple_SET_ITEM(subs, i, t);
        }
    }
    PyObject *mb = a.mb >= 0 ? PyLong_FromLong(a.mb) : Py_NewRef(Py_None);
    if (!mb) {
        Py_DECREF(subs);
        return NULL;
    }
    return Py_BuildValue("(isNN)", (int)a.stage, pc_act_type_name(a.type), mb, subs);
}

/* _sched_normalize(order) -> order with every action re-printed canonically; new ref. */
static PyObject *pc_py_sched_normalize(PyObject *mod, PyObject *order) {
    (void)mod;
    PcSchedule s;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    PyObject *out = pc_py_order_from_sched(&s);
    pc_schedule_free(&s);
    return out;
}

/* ---- CSV ---- */

/* _sched_load_csv(path) -> order; new reference. */
static PyObject *pc_py_sched_load_csv(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "O&:_sched_load_csv", PyUnicode_FSConverter, &path_obj)) return NULL;
    PcSchedule s;
    PcStatus st = pc_schedule_load_csv(PyBytes_AS_STRING(path_obj), &s);
    Py_DECREF(path_obj);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *out = pc_py_order_from_sched(&s);
    pc_schedule_free(&s);
    return out;
}

/* _sched_dump_csv(path, order) -> None. */
static PyObject *pc_py_sched_dump_csv(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *path_obj, *order;
    if (!PyArg_ParseTuple(args, "O&O:_sched_dump_csv", PyUnicode_FSConverter, &path_obj, &order)) return NULL;
    PcSchedule s;
    if (pc_py_order_to_sched(order, &s) < 0) {
        Py_DECREF(path_obj);
        return NULL;
    }
    PcStatus st = pc_schedule_dump_csv(PyBytes_AS_STRING(path_obj), &s);
    Py_DECREF(path_obj);
    pc_schedule_free(&s);
    if (st != PC_OK) return pc_py_raise(st);
    Py_RETURN_NONE;
}

/* _sched_csv_loads(text) -> order; _sched_csv_dumps(order) -> str; new references. */
static PyObject *pc_py_sched_csv_loads(PyObject *mod, PyObject *arg) {
    (void)mod;
    Py_ssize_t len;
    const char *text = PyUnicode_AsUTF8AndSize(arg, &len);
    if (!text) return NULL;
    PcSchedule s;
    PcStatus st = pc_schedule_from_csv(text, (size_t)len, &s);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *out = pc_py_order_from_sched(&s);
    pc_schedule_free(&s);
    return out;
}

static PyObject *pc_py_sched_csv_dumps(PyObject *mod, PyObject *order) {
    (void)mod;
    PcSchedule s;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    char *text = NULL;
    size_t len = 0;
    PcStatus st = pc_schedule_to_csv(&s, &text, &len);
    pc_schedule_free(&s);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *out = PyUnicode_FromStringAndSize(text, (Py_ssize_t)len);
    free(text);
    return out;
}

/* ---- lowering ---- */

/* _sched_lower(order, n_microbatches, stage_to_rank=None, n_stages=0, merge_bw=False,
 *              unshard=True, reduce_grad=True, comms=True) -> order; new reference. */
static PyObject *pc_py_sched_lower(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"order", "n_microbatches", "stage_to_rank", "n_stages", "merge_bw",
                             "unshard", "reduce_grad", "comms", NULL};
    PyObject *order, *map_obj = Py_None;
    int n, n_stages = 0, merge = 0, unshard = 1, reduce = 1, comms = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "Oi|Oipppp:_sched_lower", kwlist, &order, &n, &map_obj,
                                     &n_stages, &merge, &unshard, &reduce, &comms))
        return NULL;
    PcSchedule s, out;
    int *map = NULL;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    if (pc_py_stage_map(map_obj, &n_stages, &map) < 0) {
        pc_schedule_free(&s);
        return NULL;
    }
    unsigned flags = (merge ? PC_LOWER_MERGE_BW : 0u) | (unshard ? PC_LOWER_UNSHARD : 0u) |
                     (reduce ? PC_LOWER_REDUCE_GRAD : 0u) | (comms ? PC_LOWER_COMMS : 0u);
    PcStatus st = pc_sched_lower(&s, n, map, n_stages, flags, &out);
    pc_schedule_free(&s);
    PyMem_Free(map);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *res = pc_py_order_from_sched(&out);
    pc_schedule_free(&out);
    return res;
}

/* _sched_rank_pass(kind "unshard_reshard"|"reduce_grad"|"merge_bw", actions, arg) -> list:
 * one per-rank pass; arg = max_active_stages or n_microbatches. New reference. */
static PyObject *pc_py_sched_rank_pass(PyObject *mod, PyObject *args) {
    (void)mod;
    const char *kind;
    PyObject *row;
    int arg = 0;
    if (!PyArg_ParseTuple(args, "sO|i:_sched_rank_pass", &kind, &row, &arg)) return NULL;
    PcActionList in, out;
    if (pc_py_list_to_actions(row, "actions must be a sequence", &in) < 0) return NULL;
    PcStatus st;
    if (strcmp(kind, "unshard_reshard") == 0) {
        st = pc_sched_add_unshard_reshard(&in, arg ? arg : 3, &out);
    } else if (strcmp(kind, "reduce_grad") == 0) {
        st = pc_sched_add_reduce_grad(&in, arg, &out);
    } else if (strcmp(kind, "merge_bw") == 0) {
        st = pc_sched_merge_bw(&in, &out);
    } else {
        pc_action_list_free(&in);
        return PyErr_Format(PyExc_ValueError, "_sched_rank_pass: unknown pass '%s'", kind);
    }
    pc_action_list_free(&in);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *res = pc_py_list_from_actions(&out);
    pc_action_list_free(&out);
    return res;
}

/* _sched_add_send_recv(order, stage_to_rank, n_stages=0) -> order; new reference. */
static PyObject *pc_py_sched_add_send_recv(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *order, *map_obj;
    int n_stages = 0;
    if (!PyArg_ParseTuple(args, "OO|i:_sched_add_send_recv", &order, &map_obj, &n_stages)) return NULL;
    PcSchedule s, out;
    int *map = NULL;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    if (map_obj == Py_None) {
        pc_schedule_free(&s);
        PyErr_SetString(PyExc_TypeError, "_sched_add_send_recv: stage_to_rank is required");
        return NULL;
    }
    if (pc_py_stage_map(map_obj, &n_stages, &map) < 0) {
        pc_schedule_free(&s);
        return NULL;
    }
    PcStatus st = pc_sched_add_send_recv(&s, map, n_stages, &out);
    pc_schedule_free(&s);
    PyMem_Free(map);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *res = pc_py_order_from_sched(&out);
    pc_schedule_free(&out);
    return res;
}

/* ---- validation ---- */

/* _sched_validate(order, pp, n_stages, n_microbatches) -> list stage_to_rank; ValueError with
 * the grid on failure. New reference. */
static PyObject *pc_py_sched_validate(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *order;
    int pp, n_stages, n;
    if (!PyArg_ParseTuple(args, "Oiii:_sched_validate", &order, &pp, &n_stages, &n)) return NULL;
    PcSchedule s;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    if (n_stages <= 0) n_stages = pc_schedule_max_stage(&s) + 1;
    int *map = PyMem_Malloc((size_t)(n_stages > 0 ? n_stages : 1) * sizeof(int));
    if (!map) {
        pc_schedule_free(&s);
        return PyErr_NoMemory();
    }
    PcStatus st = pc_sched_validate(&s, pp, n_stages, n, map);
    pc_schedule_free(&s);
    if (st != PC_OK) {
        PyMem_Free(map);
        return pc_py_raise(st);
    }
    PyObject *out = PyList_New(n_stages);
    for (int i = 0; out && i < n_stages; i++) {
        PyObject *v = PyLong_FromLong(map[i]);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, i, v);
    }
    PyMem_Free(map);
    return out;
}

/* _sched_format_grid(order, err_step=-1) -> str; new reference. */
static PyObject *pc_py_sched_format_grid(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *order;
    int err = -1;
    if (!PyArg_ParseTuple(args, "O|i:_sched_format_grid", &order, &err)) return NULL;
    PcSchedule s;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    char *text = NULL;
    PcStatus st = pc_sched_format_grid(&s, err, 0, -1, &text);
    pc_schedule_free(&s);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *out = PyUnicode_FromString(text);
    free(text);
    return out;
}

/* ---- simulation ---- */

static int pc_py_cost(PyObject *costs, const char *key, double *dst) {
    PyObject *v = PyDict_GetItemString(costs, key); /* borrowed */
    if (!v) return 0;
    double d = PyFloat_AsDouble(v);
    if (d == -1.0 && PyErr_Occurred()) return -1;
    *dst = d;
    return 0;
}

/* _sched_simulate(order, costs=None, stage_to_rank=None, n_stages=0) -> dict with makespan,
 * steps, busy, comm_busy, finish, bubble_fraction, peak_inflight, n_actions (lists per rank)
 * and timeline (per rank: list of (action, start, end)). New reference. */
static PyObject *pc_py_sched_simulate(PyObject *mod, PyObject *args, PyObject *kw) {
    (void)mod;
    static char *kwlist[] = {"order", "costs", "stage_to_rank", "n_stages", NULL};
    PyObject *order, *costs = Py_None, *map_obj = Py_None;
    int n_stages = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OOi:_sched_simulate", kwlist, &order, &costs, &map_obj,
                                     &n_stages))
        return NULL;
    PcSimCosts c = pc_sim_costs_default();
    if (costs != Py_None) {
        if (!PyDict_Check(costs)) return PyErr_Format(PyExc_TypeError, "costs must be a dict");
        static const char *known[] = {"F", "I", "W", "B", "SEND", "RECV", "COMM", "OVERLAP_F_B",
                                      "REDUCE_GRAD", "UNSHARD", "RESHARD", "blocking_recv", NULL};
        PyObject *key, *val;
        Py_ssize_t pos = 0;
        while (PyDict_Next(costs, &pos, &key, &val)) {
            const char *k = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
            int ok = 0;
            for (int i = 0; k && known[i]; i++) ok |= strcmp(k, known[i]) == 0;
            if (!ok)
                return PyErr_Format(PyExc_ValueError,
                                    "unknown cost key %R (expected F, I, W, B, SEND, RECV, COMM, "
                                    "OVERLAP_F_B, REDUCE_GRAD, UNSHARD, RESHARD, blocking_recv)",
                                    key);
        }
        double blocking = 0.0;
        if (pc_py_cost(costs, "F", &c.f) || pc_py_cost(costs, "I", &c.i) || pc_py_cost(costs, "W", &c.w) ||
            pc_py_cost(costs, "B", &c.b) || pc_py_cost(costs, "SEND", &c.send) ||
            pc_py_cost(costs, "RECV", &c.recv) || pc_py_cost(costs, "COMM", &c.comm) ||
            pc_py_cost(costs, "OVERLAP_F_B", &c.overlap) ||
            pc_py_cost(costs, "REDUCE_GRAD", &c.reduce_grad) ||
            pc_py_cost(costs, "UNSHARD", &c.unshard) || pc_py_cost(costs, "RESHARD", &c.reshard) ||
            pc_py_cost(costs, "blocking_recv", &blocking))
            return NULL;
        c.blocking_recv = blocking != 0.0;
        double all[] = {c.f, c.i, c.w, c.b, c.send, c.recv, c.comm, c.reduce_grad, c.unshard, c.reshard};
        for (size_t i = 0; i < sizeof all / sizeof *all; i++)
            if (!(all[i] >= 0.0))
                return PyErr_Format(PyExc_ValueError, "costs must be >= 0 (OVERLAP_F_B may be -1 for 'sum')");
    }
    PcSchedule s;
    int *map = NULL;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    if (pc_py_stage_map(map_obj, &n_stages, &map) < 0) {
        pc_schedule_free(&s);
        return NULL;
    }
    PcSimResult res;
    PcStatus st = pc_sched_simulate(&s, map, n_stages, &c, &res);
    PyMem_Free(map);
    if (st != PC_OK) {
        pc_schedule_free(&s);
        return pc_py_raise(st);
    }
    PyObject *busy = PyList_New(res.n_ranks), *comm = PyList_New(res.n_ranks);
    PyObject *finish = PyList_New(res.n_ranks), *bubble = PyList_New(res.n_ranks);
    PyObject *peak = PyList_New(res.n_ranks), *nact = PyList_New(res.n_ranks);
    PyObject *timeline = PyList_New(res.n_ranks);
    PyObject *out = NULL;
    if (!busy || !comm || !finish || !bubble || !peak || !nact || !timeline) goto done;
    for (int32_t r = 0; r < res.n_ranks; r++) {
        const PcSimRank *rk = &res.ranks[r];
        PyList_SET_ITEM(busy, r, PyFloat_FromDouble(rk->busy));
        PyList_SET_ITEM(comm, r, PyFloat_FromDouble(rk->comm_busy));
        PyList_SET_ITEM(finish, r, PyFloat_FromDouble(rk->finish));
        PyList_SET_ITEM(bubble, r, PyFloat_FromDouble(rk->bubble_fraction));
        PyList_SET_ITEM(peak, r, PyLong_FromLong(rk->peak_inflight));
        PyList_SET_ITEM(nact, r, PyLong_FromLong(rk->n_actions));
        PyObject *row = PyList_New(0);
        if (!row) goto done;
        PyList_SET_ITEM(timeline, r, row);
        for (int32_t i = 0; i < rk->len; i++) {
            const PcAction *a = &s.ranks[r].items[i];
            if (a->type == PC_ACT_IDLE) continue;
            PyObject *txt = pc_py_action_str(a);
            PyObject *t = txt ? Py_BuildValue("(Ndd)", txt, rk->start[i], rk->end[i]) : NULL;
            if (!t || PyList_Append(row, t) < 0) {
                Py_XDECREF(t);
                goto done;
            }
            Py_DECREF(t);
        }
    }
    if (PyErr_Occurred()) goto done; /* a failed PyFloat/PyLong above */
    out = Py_BuildValue("{s:d,s:i,s:O,s:O,s:O,s:O,s:O,s:O,s:O}", "makespan", res.makespan, "steps",
                        (int)res.steps, "busy", busy, "comm_busy", comm, "finish", finish,
                        "bubble_fraction", bubble, "peak_inflight", peak, "n_actions", nact, "timeline",
                        timeline);
done:
    Py_XDECREF(busy);
    Py_XDECREF(comm);
    Py_XDECREF(finish);
    Py_XDECREF(bubble);
    Py_XDECREF(peak);
    Py_XDECREF(nact);
    Py_XDECREF(timeline);
    pc_sim_result_free(&res);
    pc_schedule_free(&s);
    return out;
}

/* _sched_simulate_steps(order, stage_to_rank=None, n_stages=0) -> (steps, spaced order);
 * torch's lock-step simulation. New reference. */
static PyObject *pc_py_sched_simulate_steps(PyObject *mod, PyObject *args) {
    (void)mod;
    PyObject *order, *map_obj = Py_None;
    int n_stages = 0;
    if (!PyArg_ParseTuple(args, "O|Oi:_sched_simulate_steps", &order, &map_obj, &n_stages)) return NULL;
    PcSchedule s, timeline;
    int *map = NULL;
    if (pc_py_order_to_sched(order, &s) < 0) return NULL;
    if (pc_py_stage_map(map_obj, &n_stages, &map) < 0) {
        pc_schedule_free(&s);
        return NULL;
    }
    int32_t steps = 0;
    PcStatus st = pc_sched_simulate_steps(&s, map, n_stages, &steps, &timeline);
    pc_schedule_free(&s);
    PyMem_Free(map);
    if (st != PC_OK) return pc_py_raise(st);
    PyObject *tl = pc_py_order_from_sched(&timeline);
    pc_schedule_free(&timeline);
    if (!tl) return NULL;
    return Py_BuildValue("(iN)", (int)steps, tl);
}

/* ---- registration ---- */

static PyMethodDef pc_py_sched_functions[] = {
    {"_sched_names", pc_py_sched_names, METH_NOARGS, "Names of the generated schedules."},
    {"_sched_info", pc_py_sched_info, METH_VARARGS,
     "_sched_info(name) -> (name, is_multi, default_stages_per_rank, 'loop'|'v')"},
    {"_sched_check", pc_py_sched_check, METH_VARARGS,
     "_sched_check(name, pp, stages_per_rank, n_microbatches): raise ValueError if torch would."},
    {"_sched_generate", (PyCFunction)(void (*)(void))pc_py_sched_generate, METH_VARARGS | METH_KEYWORDS,
     "_sched_generate(name, pp, stages_per_rank, n_microbatches, fix_1f1b=False, rank=-1)"},
    {"_sched_stage_to_rank", pc_py_sched_stage_to_rank, METH_VARARGS,
     "_sched_stage_to_rank('loop'|'v', pp, n_stages) -> list"},
    {"_sched_parse_action", pc_py_sched_parse_action, METH_O,
     "_sched_parse_action(text) -> None | (stage, type, mb, subs)"},
    {"_sched_normalize", pc_py_sched_normalize, METH_O, "Re-print every action of an order."},
    {"_sched_load_csv", pc_py_sched_load_csv, METH_VARARGS, "_sched_load_csv(path) -> order"},
    {"_sched_dump_csv", pc_py_sched_dump_csv, METH_VARARGS, "_sched_dump_csv(path, order)"},
    {"_sched_csv_loads", pc_py_sched_csv_loads, METH_O, "_sched_csv_loads(text) -> order"},
    {"_sched_csv_dumps", pc_py_sched_csv_dumps, METH_O, "_sched_csv_dumps(order) -> str"},
    {"_sched_lower", (PyCFunction)(void (*)(void))pc_py_sched_lower, METH_VARARGS | METH_KEYWORDS,
     "_sched_lower(order, n_microbatches, stage_to_rank=None, n_stages=0, merge_bw=False, "
     "unshard=True, reduce_grad=True, comms=True) -> order"},
    {"_sched_rank_pass", pc_py_sched_rank_pass, METH_VARARGS,
     "_sched_rank_pass('unshard_reshard'|'reduce_grad'|'merge_bw', actions, arg=0) -> list"},
    {"_sched_add_send_recv", pc_py_sched_add_send_recv, METH_VARARGS,
     "_sched_add_send_recv(order, stage_to_rank, n_stages=0) -> order"},
    {"_sched_validate", pc_py_sched_validate, METH_VARARGS,
     "_sched_validate(order, pp, n_stages, n_microbatches) -> stage_to_rank"},
    {"_sched_format_grid", pc_py_sched_format_grid, METH_VARARGS, "_sched_format_grid(order, err_step=-1)"},
    {"_sched_simulate", (PyCFunction)(void (*)(void))pc_py_sched_simulate, METH_VARARGS | METH_KEYWORDS,
     "_sched_simulate(order, costs=None, stage_to_rank=None, n_stages=0) -> dict"},
    {"_sched_simulate_steps", pc_py_sched_simulate_steps, METH_VARARGS,
     "_sched_simulate_steps(order, stage_to_rank=None, n_stages=0) -> (steps, timeline)"},
    {NULL, NULL, 0, NULL},
};

int pc_py_add_sched(PyObject *module) { return PyModule_AddFunctions(module, pc_py_sched_functions); }

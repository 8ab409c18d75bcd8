/* simulate.c — cost-based and lock-step dry runs of lowered schedules (see simulate.h).
 *
 * The cost simulation is a longest-path walk over the dependency graph: every rank is
 * advanced as far as its inputs allow, repeatedly, until all lists are done (the result does
 * not depend on the order ranks are visited) or nothing can move (deadlock).
 * Exports: pc_sim_costs_default, pc_sim_result_free, pc_sched_simulate,
 * pc_sched_simulate_steps.
 */
#include "simulate.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyset.h"
#include "lower.h"

/* ---- key -> time map ---- */

typedef struct PcTimeMap {
    uint64_t *keys;   /* owned; 0 = empty */
    double *vals;     /* owned */
    size_t cap, len;
} PcTimeMap;

static void pc_tmap_free(PcTimeMap *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

static int pc_tmap_get(const PcTimeMap *m, uint64_t k, double *v) {
    if (m->cap == 0) return 0;
    size_t mask = m->cap - 1;
    for (size_t i = pc_keyset_hash(k) & mask;; i = (i + 1) & mask) {
        if (m->keys[i] == k) {
            *v = m->vals[i];
            return 1;
        }
        if (m->keys[i] == 0) return 0;
    }
}

static int pc_tmap_put(PcTimeMap *m, uint64_t k, double v) {
    if ((m->len + 1) * 2 > m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 256;
        uint64_t *keys = calloc(cap, sizeof *keys);
        double *vals = calloc(cap, sizeof *vals);
        if (!keys || !vals) {
            free(keys);
            free(vals);
            return -1;
        }
        for (size_t j = 0; j < m->cap; j++) {
            if (!m->keys[j]) continue;
            size_t i = pc_keyset_hash(m->keys[j]) & (cap - 1);
            while (keys[i]) i = (i + 1) & (cap - 1);
            keys[i] = m->keys[j];
            vals[i] = m->vals[j];
        }
        free(m->keys);
        free(m->vals);
        m->keys = keys;
        m->vals = vals;
        m->cap = cap;
    }
    size_t mask = m->cap - 1;
    size_t i = pc_keyset_hash(k) & mask;
    while (m->keys[i] && m->keys[i] != k) i = (i + 1) & mask;
    if (!m->keys[i]) m->len++;
    m->keys[i] = k;
    m->vals[i] = v;
    return 0;
}

/* ---- shared ---- */

PcSimCosts pc_sim_costs_default(void) {
    PcSimCosts c;
    memset(&c, 0, sizeof c);
    c.f = 1.0;
    c.i = 1.0;
    c.w = 1.0;
    c.b = 2.0;
    c.overlap = -1.0;
    return c;
}

void pc_sim_result_free(PcSimResult *r) {
    if (!r) return;
    for (int32_t i = 0; r->ranks && i < r->n_ranks; i++) {
        free(r->ranks[i].start);
        free(r->ranks[i].end);
    }
    free(r->ranks);
    memset(r, 0, sizeof *r);
}

/* Stage -> rank map: the caller's, or inferred (malloc'd into *owned). */
static PcStatus pc_sim_map(const PcSchedule *s, const int *given, int *n_stages, int **owned,
                           const int **map) {
    *owned = NULL;
    if (*n_stages <= 0) *n_stages = pc_schedule_max_stage(s) + 1;
    if (*n_stages <= 0) *n_stages = 1;
    if (given) {
        *map = given;
        return PC_OK;
    }
    *owned = malloc((size_t)*n_stages * sizeof(int));
    if (!*owned) return pc_set_error(PC_ERR_OOM, "simulate: out of memory");
    PcStatus st = pc_sched_infer_stage_to_rank(s, *n_stages, *owned);
    if (st != PC_OK) {
        free(*owned);
        *owned = NULL;
        return st;
    }
    *map = *owned;
    return PC_OK;
}

static int pc_map_rank(const int *map, int n_stages, int stage) {
    return (stage >= 0 && stage < n_stages) ? map[stage] : -1;
}

/* ---- lock-step simulation (torch's rules) ---- */

static int pc_steps_leaf_ready(PcActionSub a, const int *map, int n_stages, PcKeySet *prev,
                               int n_ranks) {
    int owner = pc_map_rank(map, n_stages, a.stage);
    if (owner < 0 || owner >= n_ranks) return 0;
    PcKeySet *p = &prev[owner];
    int s = a.stage, mb = a.mb;
    switch (a.type) {
    case PC_ACT_F:
        return s == 0 || pc_keyset_has(p, pc_keyset_key(s, PC_ACT_RECV_F, mb)) ||
               pc_keyset_has(p, pc_keyset_key(s - 1, PC_ACT_F, mb));
    case PC_ACT_I:
    case PC_ACT_B:
        return s == n_stages - 1 || pc_keyset_has(p, pc_keyset_key(s, PC_ACT_RECV_B, mb)) ||
               pc_keyset_has(p, pc_keyset_key(s + 1, PC_ACT_I, mb)) ||
               pc_keyset_has(p, pc_keyset_key(s + 1, PC_ACT_B, mb));
    case PC_ACT_SEND_F:
        return pc_keyset_has(p, pc_keyset_key(s, PC_ACT_F, mb));
    case PC_ACT_SEND_B:
        return pc_keyset_has(p, pc_keyset_key(s, PC_ACT_I, mb)) ||
               pc_keyset_has(p, pc_keyset_key(s, PC_ACT_B, mb));
    case PC_ACT_RECV_F: {
        int peer = pc_map_rank(map, n_stages, s - 1);
        return peer >= 0 && peer < n_ranks &&
               pc_keyset_has(&prev[peer], pc_keyset_key(s - 1, PC_ACT_SEND_F, mb));
    }
    case PC_ACT_RECV_B: {
        int peer = pc_map_rank(map, n_stages, s + 1);
        return peer >= 0 && peer < n_ranks &&
               pc_keyset_has(&prev[peer], pc_keyset_key(s + 1, PC_ACT_SEND_B, mb));
    }
    default:
        return 1; /* W, REDUCE_GRAD, UNSHARD, RESHARD */
    }
}

static int pc_steps_ready(const PcAction *a, const int *map, int n_stages, PcKeySet *prev,
                          int n_ranks) {
    PcActionSub leaves[PC_ACTION_MAX_SUB];
    int nl = pc_action_leaves(a, leaves);
    for (int k = 0; k < nl; k++)
        if (!pc_steps_leaf_ready(leaves[k], map, n_stages, prev, n_ranks)) return 0;
    return 1;
}

static int pc_steps_record(const PcAction *a, int r, PcKeySet *prev) {
    PcActionSub leaves[PC_ACTION_MAX_SUB];
    int nl = pc_action_leaves(a, leaves);
    for (int k = 0; k < nl; k++)
        if (pc_keyset_add(&prev[r], pc_keyset_key(leaves[k].stage, leaves[k].type, leaves[k].mb)))
            return -1;
    return 0;
}

PcStatus pc_sched_simulate_steps(const PcSchedule *s, const int *stage_to_rank, int n_stages,
                                 int32_t *steps, PcSchedule *timeline) {
    PcStatus st = PC_OK;
    int *owned = NULL;
    const int *map = NULL;
    int R = s->n_ranks;
    PcSchedule out;
    int32_t *head = calloc((size_t)(R > 0 ? R : 1), sizeof *head);
    PcKeySet *prev = calloc((size_t)(R > 0 ? R : 1), sizeof *prev);
    PC_TRY_GOTO(st, pc_schedule_init(&out, R));
    if (!head || !prev) {
        st = pc_set_error(PC_ERR_OOM, "simulate: out of memory");
        goto fail;
    }
    PC_TRY_GOTO(st, pc_sim_map(s, stage_to_rank, &n_stages, &owned, &map));

    for (;;) {
        int remaining = 0, progress = 0;
        for (int r = 0; r < R; r++) {
            while (head[r] < s->ranks[r].len && s->ranks[r].items[head[r]].type == PC_ACT_IDLE)
                head[r]++;
            if (head[r] >= s->ranks[r].len) continue;
            remaining = 1;
            const PcAction *a = &s->ranks[r].items[head[r]];
            if (pc_steps_ready(a, map, n_stages, prev, R)) {
                PC_TRY_GOTO(st, pc_action_list_push(&out.ranks[r], *a));
                if (pc_steps_record(a, r, prev)) goto oom;
                head[r]++;
                progress = 1;
            } else {
                PC_TRY_GOTO(st, pc_action_list_push(&out.ranks[r], pc_action_idle()));
            }
        }
        if (!remaining) break;
        /* second pass: a rank left idle this step may have been unblocked by a later rank */
        for (int r = 0; r < R; r++) {
            while (head[r] < s->ranks[r].len && s->ranks[r].items[head[r]].type == PC_ACT_IDLE)
                head[r]++;
            if (head[r] >= s->ranks[r].len) continue;
            PcActionList *l = &out.ranks[r];
            if (l->len == 0 || l->items[l->len - 1].type != PC_ACT_IDLE) continue;
            const PcAction *a = &s->ranks[r].items[head[r]];
            if (pc_steps_ready(a, map, n_stages, prev, R)) {
                l->items[l->len - 1] = *a;
                if (pc_steps_record(a, r, prev)) goto oom;
                head[r]++;
            }
        }
        if (!progress) {
            char msg[1024];
            size_t pos = 0;
            for (int r = 0; r < R && pos < sizeof msg; r++) {
                if (head[r] >= s->ranks[r].len) continue;
                char txt[PC_ACTION_TEXT_MAX];
                pc_action_format(&s->ranks[r].items[head[r]], txt, sizeof txt);
                int n = snprintf(msg + pos, sizeof msg - pos, "%s rank %d next action %s", pos ? ";" : "",
                                 r, txt);
                if (n < 0) break;
                pos += (size_t)n;
            }
            st = pc_set_error(PC_ERR_INVALID, "Schedule is not progressing:%s", msg);
            goto fail;
        }
    }
    *steps = pc_schedule_max_len(&out);
    if (timeline)
        *timeline = out;
    else
        pc_schedule_free(&out);
    for (int r = 0; r < R; r++) pc_keyset_free(&prev[r]);
    free(prev);
    free(head);
    free(owned);
    return PC_OK;
oom:
    st = pc_set_error(PC_ERR_OOM, "simulate: out of memory");
fail:
    if (prev)
        for (int r = 0; r < R; r++) pc_keyset_free(&prev[r]);
    free(prev);
    free(head);
    free(owned);
    pc_schedule_free(&out);
    return st;
}

/* ---- cost simulation ---- */

/* One input of a leaf: any of n_alt events, available `extra` after the event ends. */
typedef struct PcDep {
    int n_alt;
    uint64_t key[2];
    PcActionSub what[2];
    int rank[2];
    double extra;
} PcDep;

typedef struct PcSimCtx {
    const int *map;
    int n_stages;
    const PcSimCosts *c;
} PcSimCtx;

static void pc_dep1(PcDep *d, int rank, int32_t stage, PcActType t, int32_t mb, double extra) {
    d->n_alt = 1;
    d->what[0] = (PcActionSub){stage, mb, t};
    d->key[0] = pc_keyset_key(stage, t, mb);
    d->rank[0] = rank;
    d->extra = extra;
}

static void pc_dep2(PcDep *d, int rank, int32_t stage, PcActType t0, PcActType t1, int32_t mb) {
    pc_dep1(d, rank, stage, t0, mb, 0.0);
    d->n_alt = 2;
    d->what[1] = (PcActionSub){stage, mb, t1};
    d->key[1] = pc_keyset_key(stage, t1, mb);
    d->rank[1] = rank;
}

/* Inputs of leaf l running on rank r; returns their count (<= 3). */
static int pc_leaf_deps(const PcSimCtx *x, PcActionSub l, int r, PcDep deps[3]) {
    int n = 0, s = l.stage, mb = l.mb;
    int last = x->n_stages - 1;
    switch (l.type) {
    case PC_ACT_F:
        if (s == 0) break;
        if (pc_map_rank(x->map, x->n_stages, s - 1) == r) {
            pc_dep1(&deps[n++], r, s - 1, PC_ACT_F, mb, 0.0);
        } else {
            pc_dep1(&deps[n++], r, s, PC_ACT_RECV_F, mb, 0.0);
            if (!x->c->blocking_recv) /* the data itself */
                pc_dep1(&deps[n++], pc_map_rank(x->map, x->n_stages, s - 1), s - 1, PC_ACT_SEND_F, mb,
                        x->c->comm);
        }
        break;
    case PC_ACT_I:
    case PC_ACT_B:
        pc_dep1(&deps[n++], r, s, PC_ACT_F, mb, 0.0);
        if (s == last) break;
        if (pc_map_rank(x->map, x->n_stages, s + 1) == r) {
            pc_dep2(&deps[n++], r, s + 1, PC_ACT_I, PC_ACT_B, mb);
        } else {
            pc_dep1(&deps[n++], r, s, PC_ACT_RECV_B, mb, 0.0);
            if (!x->c->blocking_recv)
                pc_dep1(&deps[n++], pc_map_rank(x->map, x->n_stages, s + 1), s + 1, PC_ACT_SEND_B, mb,
                        x->c->comm);
        }
        break;
    case PC_ACT_W:
        pc_dep1(&deps[n++], r, s, PC_ACT_I, mb, 0.0);
        break;
    case PC_ACT_SEND_F:
        pc_dep1(&deps[n++], r, s, PC_ACT_F, mb, 0.0);
        break;
    case PC_ACT_SEND_B:
        pc_dep2(&deps[n++], r, s, PC_ACT_I, PC_ACT_B, mb);
        break;
    case PC_ACT_RECV_F:
        if (x->c->blocking_recv)
            pc_dep1(&deps[n++], pc_map_rank(x->map, x->n_stages, s - 1), s - 1, PC_ACT_SEND_F, mb, x->c->comm);
        break;
    case PC_ACT_RECV_B:
        if (x->c->blocking_recv)
            pc_dep1(&deps[n++], pc_map_rank(x->map, x->n_stages, s + 1), s + 1, PC_ACT_SEND_B, mb, x->c->comm);
        break;
    default:
        break;
    }
    return n;
}

static double pc_leaf_cost(const PcSimCosts *c, PcActType t) {
    switch (t) {
    case PC_ACT_F: return c->f;
    case PC_ACT_I: return c->i;
    case PC_ACT_W: return c->w;
    case PC_ACT_B: return c->b;
    case PC_ACT_SEND_F:
    case PC_ACT_SEND_B: return c->send;
    case PC_ACT_RECV_F:
    case PC_ACT_RECV_B: return c->recv;
    case PC_ACT_REDUCE_GRAD: return c->reduce_grad;
    case PC_ACT_UNSHARD: return c->unshard;
    case PC_ACT_RESHARD: return c->reshard;
    default: return 0.0;
    }
}

/* Earliest time every input of a is there, or -1 when one is missing (and *missing set).
 * Inputs produced by earlier leaves of the same container count as ready at its start. */
static double pc_ready_time(const PcSimCtx *x, const PcTimeMap *done, const PcAction *a, int r,
                            PcDep *missing) {
    PcActionSub leaves[PC_ACTION_MAX_SUB];
    int nl = pc_action_leaves(a, leaves);
    double t = 0.0;
    for (int k = 0; k < nl; k++) {
        PcDep deps[3];
        int nd = pc_leaf_deps(x, leaves[k], r, deps);
        for (int d = 0; d < nd; d++) {
            double best = -1.0;
            for (int j = 0; j < deps[d].n_alt; j++) {
                double v;
                if (pc_tmap_get(done, deps[d].key[j], &v) && (best < 0 || v < best)) best = v;
                for (int e = 0; e < k && best < 0; e++)
                    if (leaves[e].stage == deps[d].what[j].stage && leaves[e].type == deps[d].what[j].type &&
                        leaves[e].mb == deps[d].what[j].mb)
                        best = 0.0;
            }
            if (best < 0) {
                *missing = deps[d];
                return -1.0;
            }
            if (best + deps[d].extra > t) t = best + deps[d].extra;
        }
    }
    return t;
}

PcStatus pc_sched_simulate(const PcSchedule *s, const int *stage_to_rank, int n_stages,
                           const PcSimCosts *costs, PcSimResult *out) {
    PcStatus st = PC_OK;
    PcSimCosts dflt = pc_sim_costs_default();
    const PcSimCosts *c = costs ? costs : &dflt;
    int *owned = NULL;
    const int *map = NULL;
    int R = s->n_ranks;
    PcTimeMap done = {0};
    PcSimResult res;
    memset(&res, 0, sizeof res);
    int32_t *head = calloc((size_t)(R > 0 ? R : 1), sizeof *head);
    double *clock = calloc((size_t)(R > 0 ? R : 1), sizeof *clock);
    int32_t *inflight = calloc((size_t)(R > 0 ? R : 1), sizeof *inflight);
    res.ranks = calloc((size_t)(R > 0 ? R : 1), sizeof *res.ranks);
    res.n_ranks = R;
    if (!head || !clock || !inflight || !res.ranks) goto oom;
    PC_TRY_GOTO(st, pc_sim_map(s, stage_to_rank, &n_stages, &owned, &map));
    for (int r = 0; r < R; r++) {
        int32_t len = s->ranks[r].len;
        res.ranks[r].len = len;
        res.ranks[r].start = malloc((size_t)(len > 0 ? len : 1) * sizeof(double));
        res.ranks[r].end = malloc((size_t)(len > 0 ? len : 1) * sizeof(double));
        if (!res.ranks[r].start || !res.ranks[r].end) goto oom;
    }
    PcSimCtx x = {map, n_stages, c};

    for (;;) {
        int remaining = 0, progress = 0;
        for (int r = 0; r < R; r++) {
            PcSimRank *rk = &res.ranks[r];
            while (head[r] < s->ranks[r].len) {
                int32_t i = head[r];
                const PcAction *a = &s->ranks[r].items[i];
                if (a->type == PC_ACT_IDLE) {
                    rk->start[i] = rk->end[i] = -1.0;
                    head[r]++;
                    continue;
                }
                PcDep missing;
                double ready = pc_ready_time(&x, &done, a, r, &missing);
                if (ready < 0) break;
                double t0 = ready > clock[r] ? ready : clock[r];
                PcActionSub leaves[PC_ACTION_MAX_SUB];
                int nl = pc_action_leaves(a, leaves);
                double t = t0;
                int fixed = a->n_sub > 0 && c->overlap >= 0;
                for (int k = 0; k < nl; k++) {
                    t += fixed ? 0.0 : pc_leaf_cost(c, leaves[k].type);
                    double leaf_end = fixed ? t0 + c->overlap : t;
                    if (pc_tmap_put(&done, pc_keyset_key(leaves[k].stage, leaves[k].type, leaves[k].mb),
                                    leaf_end))
                        goto oom;
                    if (leaves[k].type == PC_ACT_F) {
                        if (++inflight[r] > rk->peak_inflight) rk->peak_inflight = inflight[r];
                    } else if (leaves[k].type == PC_ACT_B || leaves[k].type == PC_ACT_W) {
                        inflight[r]--;
                    }
                }
                if (fixed) t = t0 + c->overlap;
                double dur = t - t0;
                if (pc_act_type_is_compute(a->type))
                    rk->busy += dur;
                else if (pc_act_type_is_comm(a->type))
                    rk->comm_busy += dur;
                rk->start[i] = t0;
                rk->end[i] = t;
                rk->n_actions++;
                clock[r] = t;
                head[r]++;
                progress = 1;
            }
            if (head[r] < s->ranks[r].len) remaining = 1;
        }
        if (!remaining) break;
        if (!progress) {
            char msg[1400];
            size_t pos = 0;
            for (int r = 0; r < R && pos < sizeof msg; r++) {
                if (head[r] >= s->ranks[r].len) continue;
                const PcAction *a = &s->ranks[r].items[head[r]];
                PcDep missing;
                char txt[PC_ACTION_TEXT_MAX], need[2][PC_ACTION_TEXT_MAX];
                pc_action_format(a, txt, sizeof txt);
                pc_ready_time(&x, &done, a, r, &missing);
                for (int j = 0; j < missing.n_alt; j++) {
                    PcAction w = pc_action_from_sub(missing.what[j]);
                    pc_action_format(&w, need[j], sizeof need[j]);
                }
                int n = snprintf(msg + pos, sizeof msg - pos,
                                 "%s rank %d blocked at step %d on %s (waits for %s%s%s on rank %d)",
                                 pos ? ";" : "", r, (int)head[r], txt, need[0],
                                 missing.n_alt > 1 ? " or " : "", missing.n_alt > 1 ? need[1] : "",
                                 missing.rank[0]);
                if (n < 0) break;
                pos += (size_t)n;
            }
            st = pc_set_error(PC_ERR_INVALID, "Schedule deadlocks:%s", msg);
            goto fail;
        }
    }
    res.makespan = 0.0;
    for (int r = 0; r < R; r++) {
        res.ranks[r].finish = clock[r];
        if (clock[r] > res.makespan) res.makespan = clock[r];
    }
    for (int r = 0; r < R; r++)
        res.ranks[r].bubble_fraction = res.makespan > 0 ? 1.0 - res.ranks[r].busy / res.makespan : 0.0;
    st = pc_sched_simulate_steps(s, map, n_stages, &res.steps, NULL);
    if (st == PC_ERR_INVALID) { /* torch's rules block at RECVs; ours need not */
        res.steps = -1;
        pc_clear_error();
    } else if (st != PC_OK) {
        goto fail;
    }
    *out = res;
    pc_tmap_free(&done);
    free(head);
    free(clock);
    free(inflight);
    free(owned);
    return PC_OK;
oom:
    st = pc_set_error(PC_ERR_OOM, "simulate: out of memory");
fail:
    pc_sim_result_free(&res);
    pc_tmap_free(&done);
    free(head);
    free(clock);
    free(inflight);
    free(owned);
    return st;
}

/* lower.c — lowering passes: unshard/reshard, reduce-grad, merge of I+W, send/recv insertion
 * (see lower.h for each pass's rule).
 *
 * Invariants: passes never modify their input; on failure the output is freed and empty.
 * The order of RESHARDs emitted together is ascending by stage (torch iterates a Python set,
 * which is ascending for the stage counts in torch's tests, i.e. below 8).
 * Exports: the functions of lower.h.
 */
#include "lower.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keyset.h"

/* ---- helpers ---- */

static int32_t pc_list_max_stage(const PcActionList *l) {
    int32_t m = -1;
    for (int32_t i = 0; i < l->len; i++) {
        PcActionSub leaves[PC_ACTION_MAX_SUB];
        if (l->items[i].type == PC_ACT_IDLE) continue;
        int n = pc_action_leaves(&l->items[i], leaves);
        for (int k = 0; k < n; k++)
            if (leaves[k].stage > m) m = leaves[k].stage;
    }
    return m;
}

static void pc_fmt(const PcAction *a, char buf[PC_ACTION_TEXT_MAX]) {
    pc_action_format(a, buf, PC_ACTION_TEXT_MAX);
}

/* ---- unshard / reshard ---- */

/* The next `count` distinct stages used from position i on (a container adds all its
 * sub-actions' stages before the count is checked, so it may overshoot, as torch does). */
static int pc_next_stages(const PcActionList *l, int32_t i, int count, int *ret, int ret_cap) {
    int n = 0;
    for (; i < l->len; i++) {
        const PcAction *a = &l->items[i];
        if (a->type == PC_ACT_IDLE) continue;
        PcActionSub leaves[PC_ACTION_MAX_SUB];
        int nl = pc_action_leaves(a, leaves);
        for (int k = 0; k < nl; k++) {
            int seen = 0;
            for (int j = 0; j < n; j++) seen |= ret[j] == leaves[k].stage;
            if (!seen && n < ret_cap) ret[n++] = leaves[k].stage;
            if (a->n_sub == 0 && n == count) return n;
        }
        if (a->n_sub > 0 && n >= count) return n;
    }
    return n;
}

PcStatus pc_sched_add_unshard_reshard(const PcActionList *in, int max_active, PcActionList *out) {
    PcStatus st = PC_OK;
    enum { CAP = 64 };
    int active[CAP]; /* ascending */
    int n_active = 0;
    pc_action_list_init(out);
    if (max_active < 1 || max_active > CAP - PC_ACTION_MAX_SUB)
        return pc_set_error(PC_ERR_INVALID, "add_unshard_reshard: max_active_stages=%d out of range [1, %d]",
                            max_active, CAP - PC_ACTION_MAX_SUB);
    for (int32_t i = 0; i < in->len; i++) {
        const PcAction *a = &in->items[i];
        if (a->type == PC_ACT_IDLE) continue;
        int next[CAP];
        int n_next = pc_next_stages(in, i, max_active, next, CAP);
        /* evict active stages not needed soon (ascending), keep the rest */
        int kept = 0;
        for (int j = 0; j < n_active; j++) {
            int needed = 0;
            for (int k = 0; k < n_next; k++) needed |= next[k] == active[j];
            if (needed) {
                active[kept++] = active[j];
            } else {
                PC_TRY_GOTO(st, pc_action_list_push(out, pc_action_make(active[j], PC_ACT_RESHARD, -1)));
            }
        }
        n_active = kept;
        /* fetch the missing ones in order of first use */
        for (int k = 0; k < n_next; k++) {
            int present = 0;
            for (int j = 0; j < n_active; j++) present |= active[j] == next[k];
            if (present) continue;
            PC_TRY_GOTO(st, pc_action_list_push(out, pc_action_make(next[k], PC_ACT_UNSHARD, -1)));
            int pos = n_active;
            while (pos > 0 && active[pos - 1] > next[k]) {
                active[pos] = active[pos - 1];
                pos--;
            }
            active[pos] = next[k];
            n_active++;
        }
        PC_TRY_GOTO(st, pc_action_list_push(out, *a));
    }
    for (int j = 0; j < n_active; j++)
        PC_TRY_GOTO(st, pc_action_list_push(out, pc_action_make(active[j], PC_ACT_RESHARD, -1)));
    return PC_OK;
fail:
    pc_action_list_free(out);
    return st;
}

/* ---- reduce grad ---- */

PcStatus pc_sched_add_reduce_grad(const PcActionList *in, int n_microbatches, PcActionList *out) {
    PcStatus st = PC_OK;
    pc_action_list_init(out);
    int32_t n_stages = pc_list_max_stage(in) + 1;
    int *cnt = calloc((size_t)(n_stages > 0 ? n_stages : 1) * 2, sizeof(int));
    if (!cnt) return pc_set_error(PC_ERR_OOM, "add_reduce_grad: out of memory");
    int *already = cnt + (n_stages > 0 ? n_stages : 1);
    for (int32_t i = 0; i < in->len; i++) {
        const PcAction *a = &in->items[i];
        if (a->type == PC_ACT_REDUCE_GRAD && a->stage >= 0 && a->stage < n_stages) already[a->stage] = 1;
    }
    for (int32_t i = 0; i < in->len; i++) {
        const PcAction *a = &in->items[i];
        if (a->type == PC_ACT_IDLE) continue;
        PC_TRY_GOTO(st, pc_action_list_push(out, *a));
        PcActionSub leaves[PC_ACTION_MAX_SUB];
        int nl = pc_action_leaves(a, leaves);
        for (int k = 0; k < nl; k++) {
            int s = leaves[k].stage;
            if ((leaves[k].type != PC_ACT_W && leaves[k].type != PC_ACT_B) || s < 0) continue;
            if (++cnt[s] == n_microbatches && !already[s])
                PC_TRY_GOTO(st, pc_action_list_push(out, pc_action_make(s, PC_ACT_REDUCE_GRAD, -1)));
        }
    }
    free(cnt);
    return PC_OK;
fail:
    free(cnt);
    pc_action_list_free(out);
    return st;
}

/* ---- merge I + W into B ---- */

PcStatus pc_sched_merge_bw(const PcActionList *in, PcActionList *out) {
    PcStatus st = PC_OK;
    pc_action_list_init(out);
    int32_t i = 0;
    while (i < in->len) {
        const PcAction *a = &in->items[i++];
        if (a->type == PC_ACT_IDLE) continue;
        while (i < in->len && in->items[i].type == PC_ACT_IDLE) i++;
        const PcAction *next = i < in->len ? &in->items[i] : NULL;
        if (a->type == PC_ACT_I && next && next->type == PC_ACT_W && next->stage == a->stage &&
            next->mb == a->mb) {
            PC_TRY_GOTO(st, pc_action_list_push(out, pc_action_make(a->stage, PC_ACT_B, a->mb)));
            i++;
        } else {
            PC_TRY_GOTO(st, pc_action_list_push(out, *a));
        }
    }
    return PC_OK;
fail:
    pc_action_list_free(out);
    return st;
}

/* ---- stage -> rank ---- */

PcStatus pc_sched_infer_stage_to_rank(const PcSchedule *s, int n_stages, int *map) {
    for (int i = 0; i < n_stages; i++) map[i] = -1;
    for (int32_t r = 0; r < s->n_ranks; r++) {
        for (int32_t i = 0; i < s->ranks[r].len; i++) {
            const PcAction *a = &s->ranks[r].items[i];
            if (a->type == PC_ACT_IDLE) continue;
            PcActionSub leaves[PC_ACTION_MAX_SUB];
            int nl = pc_action_leaves(a, leaves);
            for (int k = 0; k < nl; k++) {
                int st = leaves[k].stage;
                if (st < 0 || st >= n_stages) {
                    char txt[PC_ACTION_TEXT_MAX];
                    pc_fmt(a, txt);
                    return pc_set_error(PC_ERR_INVALID,
                                        "Rank %d, step %d: action %s uses stage %d outside [0, %d)",
                                        (int)r, (int)i, txt, st, n_stages);
                }
                if (map[st] == -1) {
                    map[st] = (int)r;
                } else if (map[st] != (int)r) {
                    return pc_set_error(PC_ERR_INVALID,
                                        "Rank %d, step %d: Stage %d is assigned to both rank %d and rank %d",
                                        (int)r, (int)i, st, (int)r, map[st]);
                }
            }
        }
    }
    return PC_OK;
}

/* ---- send / recv ---- */

typedef struct PcCommCtx {
    const int *stage_to_rank;
    int n_stages;
} PcCommCtx;

static int pc_rank_of(const PcCommCtx *c, int stage) {
    return (stage >= 0 && stage < c->n_stages) ? c->stage_to_rank[stage] : -1;
}

/* 1 when leaf a sends to another rank after running. */
static int pc_has_comms(const PcCommCtx *c, PcActionSub a) {
    if (a.type == PC_ACT_F)
        return a.stage != c->n_stages - 1 && pc_rank_of(c, a.stage + 1) != pc_rank_of(c, a.stage);
    if (a.type == PC_ACT_I || a.type == PC_ACT_B)
        return a.stage != 0 && pc_rank_of(c, a.stage - 1) != pc_rank_of(c, a.stage);
    return 0;
}

/* 1 when leaf a's input is on this rank already (prev = what the rank has scheduled). */
static int pc_input_ready(const PcCommCtx *c, PcActionSub a, const PcKeySet *prev) {
    if (a.type == PC_ACT_F && a.stage != 0)
        return pc_keyset_has(prev, pc_keyset_key(a.stage, PC_ACT_RECV_F, a.mb)) ||
               pc_keyset_has(prev, pc_keyset_key(a.stage - 1, PC_ACT_F, a.mb));
    if ((a.type == PC_ACT_I || a.type == PC_ACT_B) && a.stage != c->n_stages - 1)
        return pc_keyset_has(prev, pc_keyset_key(a.stage, PC_ACT_RECV_B, a.mb)) ||
               pc_keyset_has(prev, pc_keyset_key(a.stage + 1, PC_ACT_I, a.mb)) ||
               pc_keyset_has(prev, pc_keyset_key(a.stage + 1, PC_ACT_B, a.mb));
    return 1;
}

PcStatus pc_sched_add_send_recv(const PcSchedule *in, const int *stage_to_rank, int n_stages,
                                PcSchedule *out) {
    PcStatus st = PC_OK;
    PcCommCtx c = {stage_to_rank, n_stages};
    int32_t R = in->n_ranks;
    int32_t *head = calloc((size_t)(R > 0 ? R : 1), sizeof *head);
    PcKeySet *prev = calloc((size_t)(R > 0 ? R : 1), sizeof *prev);
    PC_TRY_GOTO(st, pc_schedule_init(out, R));
    if (!head || !prev) {
        st = pc_set_error(PC_ERR_OOM, "add_send_recv: out of memory");
        goto fail;
    }
    for (int32_t r = 0; r < R; r++) pc_keyset_init(&prev[r]);
    for (;;) {
        int remaining = 0, progress = 0;
        for (int32_t r = 0; r < R; r++) {
            if (head[r] >= in->ranks[r].len) continue;
            remaining = 1;
            const PcAction *a = &in->ranks[r].items[head[r]];
            if (a->type != PC_ACT_IDLE) {
                PcActionSub leaves[PC_ACTION_MAX_SUB];
                int nl = pc_action_leaves(a, leaves);
                int ready = 1;
                for (int k = 0; k < nl; k++) ready &= pc_input_ready(&c, leaves[k], &prev[r]);
                if (!ready) continue;
                PC_TRY_GOTO(st, pc_action_list_push(&out->ranks[r], *a));
                for (int k = 0; k < nl; k++) {
                    PcActionSub l = leaves[k];
                    if (pc_keyset_add(&prev[r], pc_keyset_key(l.stage, l.type, l.mb))) goto oom;
                    if (!pc_has_comms(&c, l)) continue;
                    int fwd = l.type == PC_ACT_F;
                    int peer_stage = fwd ? l.stage + 1 : l.stage - 1;
                    int peer = pc_rank_of(&c, peer_stage);
                    if (peer < 0 || peer >= R) {
                        st = pc_set_error(PC_ERR_INVALID,
                                          "add_send_recv: stage %d (peer of stage %d) has no rank",
                                          peer_stage, l.stage);
                        goto fail;
                    }
                    PcActType send_t = fwd ? PC_ACT_SEND_F : PC_ACT_SEND_B;
                    PcActType recv_t = fwd ? PC_ACT_RECV_F : PC_ACT_RECV_B;
                    PC_TRY_GOTO(st, pc_action_list_push(&out->ranks[r], pc_action_make(l.stage, send_t, l.mb)));
                    if (pc_keyset_add(&prev[r], pc_keyset_key(l.stage, send_t, l.mb))) goto oom;
                    PC_TRY_GOTO(st, pc_action_list_push(&out->ranks[peer], pc_action_make(peer_stage, recv_t, l.mb)));
                    if (pc_keyset_add(&prev[peer], pc_keyset_key(peer_stage, recv_t, l.mb))) goto oom;
                }
            }
            head[r]++;
            progress = 1;
        }
        if (!remaining) break;
        if (!progress) {
            char msg[1024];
            size_t pos = 0;
            for (int32_t r = 0; r < R && pos < sizeof msg; r++) {
                if (head[r] >= in->ranks[r].len) continue;
                char txt[PC_ACTION_TEXT_MAX];
                pc_fmt(&in->ranks[r].items[head[r]], txt);
                int n = snprintf(msg + pos, sizeof msg - pos, "%s rank %d waits at %s (step %d)",
                                 pos ? ";" : "", (int)r, txt, (int)head[r]);
                if (n < 0) break;
                pos += (size_t)n;
            }
            st = pc_set_error(PC_ERR_INVALID,
                              "Malformed compute schedule, can't schedule sends/recvs:%s", msg);
            goto fail;
        }
    }
    for (int32_t r = 0; r < R; r++) pc_keyset_free(&prev[r]);
    free(prev);
    free(head);
    return PC_OK;
oom:
    st = pc_set_error(PC_ERR_OOM, "add_send_recv: out of memory");
fail:
    if (prev)
        for (int32_t r = 0; r < R; r++) pc_keyset_free(&prev[r]);
    free(prev);
    free(head);
    pc_schedule_free(out);
    return st;
}

/* ---- full lowering ---- */

PcStatus pc_sched_lower(const PcSchedule *compute, int n_microbatches, const int *stage_to_rank,
                        int n_stages, unsigned flags, PcSchedule *out) {
    PcStatus st = PC_OK;
    PcSchedule cur;
    int *map = NULL;
    if (n_stages <= 0) n_stages = pc_schedule_max_stage(compute) + 1;
    PC_TRY(pc_schedule_copy(compute, &cur));
    if (!stage_to_rank) {
        map = malloc((size_t)(n_stages > 0 ? n_stages : 1) * sizeof *map);
        if (!map) {
            st = pc_set_error(PC_ERR_OOM, "lower: out of memory");
            goto fail;
        }
        PC_TRY_GOTO(st, pc_sched_infer_stage_to_rank(compute, n_stages, map));
        stage_to_rank = map;
    }
    for (int32_t r = 0; r < cur.n_ranks; r++) {
        PcActionList next;
        if (flags & PC_LOWER_MERGE_BW) {
            PC_TRY_GOTO(st, pc_sched_merge_bw(&cur.ranks[r], &next));
            pc_action_list_free(&cur.ranks[r]);
            cur.ranks[r] = next;
        }
        if (flags & PC_LOWER_UNSHARD) {
            PC_TRY_GOTO(st, pc_sched_add_unshard_reshard(&cur.ranks[r], 3, &next));
            pc_action_list_free(&cur.ranks[r]);
            cur.ranks[r] = next;
        }
        if (flags & PC_LOWER_REDUCE_GRAD) {
            PC_TRY_GOTO(st, pc_sched_add_reduce_grad(&cur.ranks[r], n_microbatches, &next));
            pc_action_list_free(&cur.ranks[r]);
            cur.ranks[r] = next;
        }
    }
    if (flags & PC_LOWER_COMMS) {
        PcSchedule lowered;
        PC_TRY_GOTO(st, pc_sched_add_send_recv(&cur, stage_to_rank, n_stages, &lowered));
        pc_schedule_free(&cur);
        cur = lowered;
    }
    free(map);
    *out = cur;
    return PC_OK;
fail:
    free(map);
    pc_schedule_free(&cur);
    return st;
}

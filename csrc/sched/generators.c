/* generators.c — the seven schedules' compute-only orders (see generators.h).
 *
 * Every generator builds one rank's list from closed-form phase counts; only
 * InterleavedZeroBubble needs all ranks at once (a lock-step pass that inserts idle slots
 * where a forward would run before its previous stage's forward).
 * Exports: the functions of generators.h.
 */
#include "generators.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "lower.h"

/* ---- names and checks ---- */

static const char *const pc_sched_names[PC_SCHED_KIND_COUNT] = {
    "GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble", "ZBVZeroBubble",
    "DualPipeV",
};

const char *pc_sched_kind_name(PcSchedKind k) {
    if ((int)k < 0 || k >= PC_SCHED_KIND_COUNT) return "?";
    return pc_sched_names[k];
}

static int pc_streq_nocase(const char *a, const char *b) {
    for (; *a && *b; a++, b++)
        if (tolower((unsigned char)*a) != tolower((unsigned char)*b)) return 0;
    return *a == *b;
}

PcStatus pc_sched_kind_from_name(const char *name, PcSchedKind *out) {
    for (int k = 0; k < PC_SCHED_KIND_COUNT; k++) {
        if (pc_streq_nocase(name, pc_sched_names[k])) {
            *out = (PcSchedKind)k;
            return PC_OK;
        }
    }
    return pc_set_error(PC_ERR_INVALID,
                        "Unknown schedule name '%.200s'. The valid options are ['GPipe', '1F1B', "
                        "'Interleaved1F1B', 'LoopedBFS', 'InterleavedZeroBubble', "
                        "'ZBVZeroBubble', 'DualPipeV'] (case-insensitive)",
                        name);
}

int pc_sched_kind_is_multi(PcSchedKind k) { return k != PC_SCHED_GPIPE && k != PC_SCHED_1F1B; }

int pc_sched_default_stages_per_rank(PcSchedKind k) { return pc_sched_kind_is_multi(k) ? 2 : 1; }

PcStageStyle pc_sched_kind_style(PcSchedKind k) {
    return (k == PC_SCHED_ZBV || k == PC_SCHED_DUALPIPEV) ? PC_STAGE_V : PC_STAGE_LOOP;
}

PcStatus pc_sched_check(PcSchedKind k, int pp, int spr, int n) {
    if ((int)k < 0 || k >= PC_SCHED_KIND_COUNT)
        return pc_set_error(PC_ERR_INVALID, "schedule: unknown schedule kind %d", (int)k);
    const char *name = pc_sched_names[k];
    if (pp < 1) return pc_set_error(PC_ERR_INVALID, "%s: pp (number of ranks) must be >= 1, got %d", name, pp);
    if (n < 1)
        return pc_set_error(PC_ERR_INVALID, "%s: n_microbatches must be >= 1, got %d", name, n);
    if (spr == 0) spr = pc_sched_default_stages_per_rank(k);
    if (!pc_sched_kind_is_multi(k) && spr != 1)
        return pc_set_error(PC_ERR_INVALID,
                            "%s is a single-stage schedule: stages_per_rank must be 1, got %d",
                            name, spr);
    if (spr < 1)
        return pc_set_error(PC_ERR_INVALID, "%s: stages_per_rank must be >= 1, got %d", name, spr);
    if ((long long)pp * spr > 1000000)
        return pc_set_error(PC_ERR_INVALID, "%s: %d ranks x %d stages per rank is too many stages",
                            name, pp, spr);
    int n_stages = pp * spr;
    switch (k) {
    case PC_SCHED_GPIPE:
    case PC_SCHED_LOOPED_BFS:
        return PC_OK;
    case PC_SCHED_1F1B:
        if (n < n_stages)
            return pc_set_error(PC_ERR_INVALID,
                                "Number of microbatches (%d) must be greater than or equal to "
                                "the number of stages (%d).",
                                n, n_stages);
        return PC_OK;
    case PC_SCHED_INTERLEAVED_1F1B:
    case PC_SCHED_INTERLEAVED_ZB: {
        int rounds = n / pp > 1 ? n / pp : 1;
        if (n % rounds != 0)
            return pc_set_error(PC_ERR_INVALID,
                                "%s requires the number of microbatches to be a multiple of the "
                                "number of rounds (%d), but got %d.",
                                k == PC_SCHED_INTERLEAVED_1F1B ? "Interleaved 1F1B" : "Zero bubble",
                                rounds, n);
        return PC_OK;
    }
    case PC_SCHED_ZBV:
    case PC_SCHED_DUALPIPEV:
        if (spr != 2)
            return pc_set_error(PC_ERR_INVALID,
                                "ZBV requires exactly 2 stages per rank, but got %d.", spr);
        if (k == PC_SCHED_DUALPIPEV && n < n_stages)
            return pc_set_error(PC_ERR_INVALID,
                                "DualPipeV requires at least as many microbatches as stages, but "
                                "got %d microbatches and %d stages.",
                                n, n_stages);
        return PC_OK;
    default:
        return pc_set_error(PC_ERR_INVALID, "schedule: unknown schedule kind %d", (int)k);
    }
}

int pc_sched_stage_to_rank(PcStageStyle style, int pp, int n_stages, int stage) {
    if (pp < 1 || stage < 0 || stage >= n_stages) return -1;
    if (style == PC_STAGE_LOOP) return stage % pp;
    if (n_stages % pp != 0) return -1;
    int cycle = stage / pp, pos = stage % pp;
    return (cycle % 2 == 0) ? pos : pp - 1 - pos;
}

/* ---- helpers ---- */

static PcStatus pc_push(PcActionList *l, int32_t stage, PcActType t, int32_t mb) {
    return pc_action_list_push(l, pc_action_make(stage, t, mb));
}

static PcStatus pc_push_idle(PcActionList *l, int count) {
    for (int i = 0; i < count; i++) PC_TRY(pc_action_list_push(l, pc_action_idle()));
    return PC_OK;
}

/* ---- single-stage schedules ---- */

static PcStatus pc_gen_gpipe(int pp, int n, int rank, PcActionList *raw) {
    PC_TRY(pc_push_idle(raw, rank));
    for (int mb = 0; mb < n; mb++) PC_TRY(pc_push(raw, rank, PC_ACT_F, mb));
    PC_TRY(pc_push_idle(raw, 3 * (pp - 1 - rank)));
    for (int mb = 0; mb < n; mb++) PC_TRY(pc_push(raw, rank, PC_ACT_B, mb));
    return PC_OK;
}

static PcStatus pc_gen_1f1b(int pp, int n, int rank, unsigned flags, PcActionList *raw) {
    PC_TRY(pc_push_idle(raw, rank));
    int warmup = pp - 1 - rank;
    /* torch starts its counter at 0, so a rank without warm-up numbers forwards from 1 */
    int fwd_mb = (flags & PC_SCHED_FIX_1F1B_NUMBERING) ? -1 : 0;
    for (int i = 0; i < warmup; i++) {
        PC_TRY(pc_push(raw, rank, PC_ACT_F, i));
        fwd_mb = i;
    }
    PC_TRY(pc_push_idle(raw, 2 * (pp - 1 - rank)));
    int bwd_mb = 0;
    for (int remaining = n - warmup; remaining > 0; remaining--) {
        fwd_mb++;
        PC_TRY(pc_push(raw, rank, PC_ACT_F, fwd_mb));
        PC_TRY(pc_push(raw, rank, PC_ACT_B, bwd_mb));
        bwd_mb++;
    }
    while (bwd_mb < n) {
        PC_TRY(pc_push_idle(raw, 1));
        PC_TRY(pc_push(raw, rank, PC_ACT_B, bwd_mb));
        bwd_mb++;
    }
    return PC_OK;
}

/* ---- looped (interleaved) schedules ---- */

static PcStatus pc_gen_looped_bfs(int pp, int v, int n, int rank, PcActionList *out) {
    PC_TRY(pc_push_idle(out, rank));
    for (int c = 0; c < v; c++)
        for (int mb = 0; mb < n; mb++) PC_TRY(pc_push(out, c * pp + rank, PC_ACT_F, mb));
    PC_TRY(pc_push_idle(out, 2 * (pp - 1 - rank)));
    for (int c = v - 1; c >= 0; c--)
        for (int mb = n - 1; mb >= 0; mb--) PC_TRY(pc_push(out, c * pp + rank, PC_ACT_B, mb));
    return PC_OK;
}

/* Shared state of the interleaved 1F1B / zero-bubble rank builder. */
typedef struct PcInterleave {
    int pp, v, n, rank;
    int mb_per_round;
    int warmup;
    int *fwd_cnt, *bwd_cnt, *wgt_cnt; /* per global stage, n_stages entries each */
} PcInterleave;

static int pc_il_fwd_stage(const PcInterleave *s, int op) {
    int local = (op / s->mb_per_round) % s->v;
    return local * s->pp + s->rank;
}

static int pc_il_bwd_stage(const PcInterleave *s, int op) {
    int local = s->v - 1 - ((op - s->warmup) / s->mb_per_round) % s->v;
    return local * s->pp + s->rank;
}

static int pc_il_warmup(int rank, int v, int mb_per_round, int pp, int n, int factor) {
    int w = (v - 1) * mb_per_round + factor * (pp - 1 - rank);
    return w < n * v ? w : n * v;
}

static PcStatus pc_gen_interleaved(int pp, int v, int n, int rank, int zero_bubble,
                                   PcActionList *out) {
    PcStatus st = PC_OK;
    int n_stages = pp * v;
    int rounds = n / pp > 1 ? n / pp : 1;
    PcInterleave s = {pp, v, n, rank, n / rounds, 0, NULL, NULL, NULL};
    s.warmup = pc_il_warmup(rank, v, s.mb_per_round, pp, n, zero_bubble ? 1 : 2);
    int total_mb_ops = v * n;
    int fwd_bwd = total_mb_ops - s.warmup;
    int cooldown = total_mb_ops - fwd_bwd;
    int total = s.warmup + fwd_bwd + cooldown;
    int post_warmup = zero_bubble ? pp - rank - 1
                                  : (v * pp + 2 * (pp - 1 - rank)) - (s.warmup + rank);
    int weight_delay = rank; /* zero bubble: W starts `rank` backward ops after warm-up */
    int *bwd_ops = NULL;
    int n_bwd_ops = 0, n_w = 0;
    PcActType bwd_type = zero_bubble ? PC_ACT_I : PC_ACT_B;

    s.fwd_cnt = calloc((size_t)n_stages * 3, sizeof(int));
    bwd_ops = malloc((size_t)(total > 0 ? total : 1) * sizeof(int));
    if (!s.fwd_cnt || !bwd_ops) {
        st = pc_set_error(PC_ERR_OOM, "schedule: out of memory");
        goto fail;
    }
    s.bwd_cnt = s.fwd_cnt + n_stages;
    s.wgt_cnt = s.bwd_cnt + n_stages;

    PC_TRY_GOTO(st, pc_push_idle(out, rank));
    for (int op = 0; op < total; op++) {
        if (op < s.warmup) {
            int fs = pc_il_fwd_stage(&s, op);
            PC_TRY_GOTO(st, pc_push(out, fs, PC_ACT_F, s.fwd_cnt[fs]++));
            if (op == s.warmup - 1) PC_TRY_GOTO(st, pc_push_idle(out, post_warmup));
            continue;
        }
        if (op < s.warmup + fwd_bwd) {
            int fs = pc_il_fwd_stage(&s, op);
            PC_TRY_GOTO(st, pc_push(out, fs, PC_ACT_F, s.fwd_cnt[fs]++));
        } else if (!zero_bubble) {
            PC_TRY_GOTO(st, pc_push_idle(out, 1)); /* align with the 1F1B of other ranks */
        }
        int bs = pc_il_bwd_stage(&s, op);
        PC_TRY_GOTO(st, pc_push(out, bs, bwd_type, s.bwd_cnt[bs]++));
        bwd_ops[n_bwd_ops++] = op;
        if (zero_bubble && op - s.warmup >= weight_delay) {
            int ws = pc_il_bwd_stage(&s, bwd_ops[n_w++]);
            PC_TRY_GOTO(st, pc_push(out, ws, PC_ACT_W, s.wgt_cnt[ws]++));
        }
    }
    while (zero_bubble && n_w < n_bwd_ops) {
        int ws = pc_il_bwd_stage(&s, bwd_ops[n_w++]);
        PC_TRY_GOTO(st, pc_push(out, ws, PC_ACT_W, s.wgt_cnt[ws]++));
    }
fail:
    free(s.fwd_cnt);
    free(bwd_ops);
    return st;
}

/* InterleavedZeroBubble post-pass over all ranks in lock step: a forward whose previous
 * stage has not run that microbatch's forward in an earlier step (and a full backward whose
 * next stage has not run its backward) waits one idle slot. */
static PcStatus pc_add_bubbles(const PcSchedule *in, int n_stages, int n, PcSchedule *out) {
    PcStatus st = PC_OK;
    size_t cells = (size_t)n_stages * (size_t)n;
    unsigned char *seen_f = calloc(cells * 2, 1);
    unsigned char *seen_b = seen_f ? seen_f + cells : NULL;
    int32_t *next = calloc((size_t)in->n_ranks, sizeof(int32_t));
    PcActionSub *fresh = malloc((size_t)(in->n_ranks > 0 ? in->n_ranks : 1) * sizeof *fresh);
    PC_TRY_GOTO(st, pc_schedule_init(out, in->n_ranks));
    if (!seen_f || !next || !fresh) {
        st = pc_set_error(PC_ERR_OOM, "schedule: out of memory");
        goto fail;
    }
    for (;;) {
        int active = 0, n_fresh = 0;
        for (int r = 0; r < in->n_ranks; r++) {
            if (next[r] >= in->ranks[r].len) continue;
            active = 1;
            const PcAction *a = &in->ranks[r].items[next[r]];
            if (a->type == PC_ACT_IDLE) {
                next[r]++;
                PC_TRY_GOTO(st, pc_action_list_push(&out->ranks[r], pc_action_idle()));
                continue;
            }
            int bubble = 0;
            int ok_mb = a->mb >= 0 && a->mb < n;
            if (a->type == PC_ACT_F && a->stage != 0) {
                bubble = !(ok_mb && seen_f[(size_t)(a->stage - 1) * n + a->mb]);
            } else if (a->type == PC_ACT_B) {
                if (a->stage == n_stages - 1)
                    bubble = !(ok_mb && seen_f[(size_t)a->stage * n + a->mb]);
                else
                    bubble = !(ok_mb && seen_b[(size_t)(a->stage + 1) * n + a->mb]);
            }
            if (bubble) {
                PC_TRY_GOTO(st, pc_action_list_push(&out->ranks[r], pc_action_idle()));
            } else {
                PC_TRY_GOTO(st, pc_action_list_push(&out->ranks[r], *a));
                fresh[n_fresh++] = pc_action_as_sub(a);
                next[r]++;
            }
        }
        for (int i = 0; i < n_fresh; i++) {
            PcActionSub f = fresh[i];
            if (f.mb < 0 || f.mb >= n || f.stage < 0 || f.stage >= n_stages) continue;
            if (f.type == PC_ACT_F) seen_f[(size_t)f.stage * n + f.mb] = 1;
            if (f.type == PC_ACT_B) seen_b[(size_t)f.stage * n + f.mb] = 1;
        }
        if (!active) break;
    }
    free(seen_f);
    free(next);
    free(fresh);
    return PC_OK;
fail:
    free(seen_f);
    free(next);
    free(fresh);
    pc_schedule_free(out);
    return st;
}

/* ---- V schedules ---- */

static PcStatus pc_gen_zbv(int pp, int n, int rank, PcActionList *out) {
    int n_stages = 2 * pp;
    int n_micro = n > 2 * pp - 1 ? n : 2 * pp - 1;
    int s0 = rank, s1 = n_stages - 1 - rank;
    int f0 = 0, f1 = 0, b0 = 0, b1 = 0;
    int32_t start = out->len;

    PC_TRY(pc_push_idle(out, rank));
    for (int i = 0; i < 2 * (pp - rank) - 1; i++) PC_TRY(pc_push(out, s0, PC_ACT_F, f0++));
    for (int i = 0; i < rank; i++) {
        PC_TRY(pc_push(out, s1, PC_ACT_F, f1++));
        PC_TRY(pc_push(out, s0, PC_ACT_F, f0++));
    }
    for (int i = 0; i < pp - rank; i++) {
        PC_TRY(pc_push(out, s1, PC_ACT_F, f1++));
        PC_TRY(pc_push(out, s1, PC_ACT_I, b1));
        PC_TRY(pc_push(out, s1, PC_ACT_W, b1));
        b1++;
    }
    while (f1 < f0 || f0 < n_micro) {
        if (f0 < n_micro) PC_TRY(pc_push(out, s0, PC_ACT_F, f0++));
        PC_TRY(pc_push(out, s0, PC_ACT_I, b0));
        PC_TRY(pc_push(out, s0, PC_ACT_W, b0));
        b0++;
        PC_TRY(pc_push(out, s1, PC_ACT_F, f1++));
        PC_TRY(pc_push(out, s1, PC_ACT_I, b1));
        PC_TRY(pc_push(out, s1, PC_ACT_W, b1));
        b1++;
    }
    int w0 = b0, w1 = b1;
    for (int i = 0; i < rank; i++) {
        PC_TRY(pc_push(out, s0, PC_ACT_I, b0++));
        PC_TRY(pc_push(out, s1, PC_ACT_I, b1++));
    }
    for (int i = 0; i < pp - rank; i++) {
        PC_TRY(pc_push(out, s0, PC_ACT_I, b0++));
        PC_TRY(pc_push(out, s0, PC_ACT_W, w0++));
    }
    while (w1 < b1) PC_TRY(pc_push(out, s1, PC_ACT_W, w1++));
    while (w0 < b0) PC_TRY(pc_push(out, s0, PC_ACT_W, w0++));
    if (!(w0 == b0 && b0 == f0 && w1 == b1 && b1 == f1))
        return pc_set_error(PC_ERR_RUNTIME, "ZBVZeroBubble: internal count mismatch on rank %d", rank);
    /* the schedule was built for n_micro >= 2*pp-1 microbatches: blank the extra ones */
    for (int32_t i = start; i < out->len; i++)
        if (out->items[i].mb >= n) out->items[i] = pc_action_idle();
    return PC_OK;
}

/* DualPipeV builder state: counters per local chunk (0: stage r, 1: stage 2pp-1-r) and a FIFO
 * of weight work deferred by I actions. */
typedef struct PcDualPipe {
    int stage[2];
    int f[2], i[2], w[2];
    int *wq_stage, *wq_mb; /* FIFO storage */
    int wq_head, wq_tail;
    PcActionList *out;
} PcDualPipe;

static int pc_dp_chunk(const PcDualPipe *d, int stage) { return stage == d->stage[0] ? 0 : 1; }

static PcStatus pc_dp_add(PcDualPipe *d, int chunk, PcActType t) {
    int stage = d->stage[chunk];
    if (t == PC_ACT_F) return pc_push(d->out, stage, PC_ACT_F, d->f[chunk]++);
    if (t == PC_ACT_B) { /* full backward: uses the I counter, advances I and W */
        PC_TRY(pc_push(d->out, stage, PC_ACT_B, d->i[chunk]));
        d->i[chunk]++;
        d->w[chunk]++;
        return PC_OK;
    }
    /* I: defer its W */
    int mb = d->i[chunk]++;
    PC_TRY(pc_push(d->out, stage, PC_ACT_I, mb));
    d->wq_stage[d->wq_tail] = stage;
    d->wq_mb[d->wq_tail] = mb;
    d->wq_tail++;
    return PC_OK;
}

static PcStatus pc_dp_pending_w(PcDualPipe *d) {
    if (d->wq_head == d->wq_tail) return PC_OK;
    int stage = d->wq_stage[d->wq_head], mb = d->wq_mb[d->wq_head];
    d->wq_head++;
    PC_TRY(pc_push(d->out, stage, PC_ACT_W, mb));
    d->w[pc_dp_chunk(d, stage)]++;
    return PC_OK;
}

static PcStatus pc_dp_overlap(PcDualPipe *d, int fwd_chunk, int bwd_chunk) {
    PcActionSub f = {d->stage[fwd_chunk], d->f[fwd_chunk], PC_ACT_F};
    PcActionSub b = {d->stage[bwd_chunk], d->i[bwd_chunk], PC_ACT_B};
    PC_TRY(pc_action_list_push(d->out, pc_action_overlap(f, b)));
    d->f[fwd_chunk]++;
    d->i[bwd_chunk]++;
    d->w[bwd_chunk]++;
    return PC_OK;
}

static PcStatus pc_gen_dualpipev(int pp, int n, int rank, PcActionList *out) {
    PcStatus st = PC_OK;
    PcDualPipe d;
    memset(&d, 0, sizeof d);
    d.stage[0] = rank;
    d.stage[1] = 2 * pp - 1 - rank;
    d.out = out;
    d.wq_stage = malloc((size_t)(2 * n + 4) * 2 * sizeof(int));
    if (!d.wq_stage) return pc_set_error(PC_ERR_OOM, "schedule: out of memory");
    d.wq_mb = d.wq_stage + (2 * n + 4);

    for (int k = 0; k < 2 * (pp - rank - 1); k++) PC_TRY_GOTO(st, pc_dp_add(&d, 0, PC_ACT_F));
    for (int k = 0; k < rank + 1; k++) {
        PC_TRY_GOTO(st, pc_dp_add(&d, 0, PC_ACT_F));
        PC_TRY_GOTO(st, pc_dp_add(&d, 1, PC_ACT_F));
    }
    for (int k = 0; k < pp - rank - 1; k++) {
        PC_TRY_GOTO(st, pc_dp_add(&d, 1, PC_ACT_I));
        PC_TRY_GOTO(st, pc_dp_pending_w(&d));
        PC_TRY_GOTO(st, pc_dp_add(&d, 1, PC_ACT_F));
    }
    int main_steps = n - 2 * pp + rank + 1;
    for (int k = 0; k < main_steps; k++) {
        if (k == 0 && rank == pp - 1) { /* last rank: no overlap for the first pair */
            PC_TRY_GOTO(st, pc_dp_add(&d, 0, PC_ACT_F));
            PC_TRY_GOTO(st, pc_dp_add(&d, 1, PC_ACT_B));
        } else {
            PC_TRY_GOTO(st, pc_dp_overlap(&d, 0, 1));
        }
        PC_TRY_GOTO(st, pc_dp_overlap(&d, 1, 0));
    }
    for (int k = 0; k < pp - rank - 1; k++) {
        PC_TRY_GOTO(st, pc_dp_add(&d, 1, PC_ACT_B));
        PC_TRY_GOTO(st, pc_dp_overlap(&d, 1, 0));
    }
    int zb = 0;
    int n6 = rank + 1;
    for (int k = 0; k < n6; k++) { /* the second half switches to input-only backward */
        if (k == n6 / 2 && rank % 2 == 1) zb = 1;
        PC_TRY_GOTO(st, pc_dp_add(&d, 1, zb ? PC_ACT_I : PC_ACT_B));
        if (k == n6 / 2 && rank % 2 == 0) zb = 1;
        PC_TRY_GOTO(st, pc_dp_add(&d, 0, zb ? PC_ACT_I : PC_ACT_B));
    }
    for (int k = 0; k < pp - rank - 1; k++) {
        PC_TRY_GOTO(st, pc_dp_pending_w(&d));
        PC_TRY_GOTO(st, pc_dp_add(&d, 0, zb ? PC_ACT_I : PC_ACT_B));
    }
    for (int k = 0; k < rank + 1; k++) PC_TRY_GOTO(st, pc_dp_pending_w(&d));
fail:
    free(d.wq_stage);
    return st;
}

/* ---- entry points ---- */

static PcStatus pc_gen_rank_raw(PcSchedKind k, int pp, int spr, int n, int rank, unsigned flags,
                                PcActionList *out) {
    PcStatus st = PC_OK;
    PcActionList raw;
    pc_action_list_init(&raw);
    switch (k) {
    case PC_SCHED_GPIPE:
    case PC_SCHED_1F1B:
        /* torch runs single-stage orders through its reduce-grad pass */
        if (k == PC_SCHED_GPIPE)
            PC_TRY_GOTO(st, pc_gen_gpipe(pp, n, rank, &raw));
        else
            PC_TRY_GOTO(st, pc_gen_1f1b(pp, n, rank, flags, &raw));
        PC_TRY_GOTO(st, pc_sched_add_reduce_grad(&raw, n, out));
        break;
    case PC_SCHED_INTERLEAVED_1F1B:
        PC_TRY_GOTO(st, pc_gen_interleaved(pp, spr, n, rank, 0, out));
        break;
    case PC_SCHED_LOOPED_BFS:
        PC_TRY_GOTO(st, pc_gen_looped_bfs(pp, spr, n, rank, out));
        break;
    case PC_SCHED_INTERLEAVED_ZB:
        PC_TRY_GOTO(st, pc_gen_interleaved(pp, spr, n, rank, 1, out));
        break;
    case PC_SCHED_ZBV:
        PC_TRY_GOTO(st, pc_gen_zbv(pp, n, rank, out));
        break;
    case PC_SCHED_DUALPIPEV:
        PC_TRY_GOTO(st, pc_gen_dualpipev(pp, n, rank, out));
        break;
    default:
        st = pc_set_error(PC_ERR_INVALID, "schedule: unknown schedule kind %d", (int)k);
        break;
    }
fail:
    pc_action_list_free(&raw);
    return st;
}

PcStatus pc_sched_generate(PcSchedKind k, int pp, int spr, int n, unsigned flags, PcSchedule *out) {
    PcStatus st;
    PC_TRY(pc_sched_check(k, pp, spr, n));
    if (spr == 0) spr = pc_sched_default_stages_per_rank(k);
    PcSchedule s;
    PC_TRY(pc_schedule_init(&s, pp));
    for (int r = 0; r < pp; r++) {
        st = pc_gen_rank_raw(k, pp, spr, n, r, flags, &s.ranks[r]);
        if (st != PC_OK) {
            pc_schedule_free(&s);
            return st;
        }
    }
    if (k == PC_SCHED_INTERLEAVED_ZB) {
        PcSchedule bubbled;
        st = pc_add_bubbles(&s, pp * spr, n, &bubbled);
        pc_schedule_free(&s);
        if (st != PC_OK) return st;
        s = bubbled;
    }
    *out = s;
    return PC_OK;
}

PcStatus pc_sched_generate_rank(PcSchedKind k, int pp, int spr, int n, int rank, unsigned flags,
                                PcActionList *out) {
    pc_action_list_init(out);
    PC_TRY(pc_sched_check(k, pp, spr, n));
    if (rank < 0 || rank >= pp)
        return pc_set_error(PC_ERR_INDEX, "%s: rank %d out of range for %d ranks",
                            pc_sched_kind_name(k), rank, pp);
    if (k != PC_SCHED_INTERLEAVED_ZB) {
        if (spr == 0) spr = pc_sched_default_stages_per_rank(k);
        PcStatus st = pc_gen_rank_raw(k, pp, spr, n, rank, flags, out);
        if (st != PC_OK) pc_action_list_free(out);
        return st;
    }
    /* the zero-bubble post-pass looks at every rank */
    PcSchedule all;
    PC_TRY(pc_sched_generate(k, pp, spr, n, flags, &all));
    *out = all.ranks[rank];
    pc_action_list_init(&all.ranks[rank]);
    pc_schedule_free(&all);
    return PC_OK;
}

/* validate.c — schedule validator and grid formatter (see validate.h).
 *
 * Invariant: the validator reads its input only; per-stage bookkeeping is a byte per
 * (stage, microbatch, type) in one calloc'd block.
 * Exports: pc_sched_validate, pc_sched_format_grid.
 */
#include "validate.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- grid ---- */

typedef struct PcText {
    char *p;
    size_t len, cap;
    int oom;
} PcText;

static void pc_text_vput(PcText *t, const char *fmt, va_list ap) {
    if (t->oom) return;
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) return;
    if (t->len + (size_t)n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (t->len + (size_t)n + 1 > cap) cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->oom = 1;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
    t->len += (size_t)n;
}

static void pc_text_put(PcText *t, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    pc_text_vput(t, fmt, ap);
    va_end(ap);
}

static int pc_num_digits(int v) {
    int d = 1;
    while (v >= 10) {
        v /= 10;
        d++;
    }
    return d;
}

PcStatus pc_sched_format_grid(const PcSchedule *s, int err_step, int first, int last, char **out) {
    PcText t = {0};
    int32_t steps = pc_schedule_max_len(s);
    int R = s->n_ranks;
    int *width = calloc((size_t)(R > 0 ? R : 1), sizeof(int));
    if (!width) return pc_set_error(PC_ERR_OOM, "format_grid: out of memory");
    char txt[PC_ACTION_TEXT_MAX];
    for (int r = 0; r < R; r++) {
        width[r] = snprintf(NULL, 0, "Rank %d", r);
        for (int32_t i = 0; i < s->ranks[r].len; i++) {
            int n = pc_action_format(&s->ranks[r].items[i], txt, sizeof txt);
            if (n > width[r]) width[r] = n;
        }
    }
    int dig = pc_num_digits(steps > 0 ? steps - 1 : 0);
    int label = 5 + dig; /* "Step " + digits */
    if (first < 0) first = 0;
    if (last < 0 || last >= steps) last = steps - 1;
    pc_text_put(&t, "%*s", label + 2, "");
    for (int r = 0; r < R; r++) {
        char lab[32];
        snprintf(lab, sizeof lab, "Rank %d", r);
        pc_text_put(&t, r + 1 < R ? "%-*s " : "%-*s", width[r], lab);
    }
    pc_text_put(&t, "\n");
    if (first > 0) pc_text_put(&t, "... (%d earlier steps)\n", first);
    for (int i = first; i <= last; i++) {
        pc_text_put(&t, "Step %0*d: ", dig, i);
        for (int r = 0; r < R; r++) {
            txt[0] = '\0';
            if (i < s->ranks[r].len) pc_action_format(&s->ranks[r].items[i], txt, sizeof txt);
            pc_text_put(&t, r + 1 < R ? "%-*s " : "%-*s", width[r], txt);
        }
        if (i == err_step) pc_text_put(&t, " <-- ERROR HERE");
        pc_text_put(&t, "\n");
    }
    if (last < steps - 1) pc_text_put(&t, "... (%d later steps)\n", steps - 1 - last);
    free(width);
    if (t.oom || !t.p) {
        free(t.p);
        return pc_set_error(PC_ERR_OOM, "format_grid: out of memory");
    }
    *out = t.p;
    return PC_OK;
}

/* ---- validator ---- */

/* Fail with `head` plus a grid window around `step` that fits the error buffer. */
static PcStatus pc_fail_with_grid(const PcSchedule *s, int step, const char *head) {
    char *grid = NULL;
    int R = s->n_ranks > 0 ? s->n_ranks : 1;
    int32_t steps = pc_schedule_max_len(s);
    /* a row is about 10 + R * (width + 1) chars; keep the grid under ~1400 chars */
    int row_chars = 12 + R * 10;
    int rows = 1400 / row_chars;
    if (rows < 3) rows = 3;
    int first = step - rows / 2, last;
    if (first < 0) first = 0;
    last = first + rows - 1;
    if (last >= steps) {
        last = steps - 1;
        first = last - rows + 1 > 0 ? last - rows + 1 : 0;
    }
    if (pc_sched_format_grid(s, step, first, last, &grid) != PC_OK)
        return pc_set_error(PC_ERR_INVALID, "%s", head);
    PcStatus st = pc_set_error(PC_ERR_INVALID, "%s\n\nPipeline schedule (steps x ranks):\n%s", head, grid);
    free(grid);
    return st;
}

enum { PC_V_F = 0, PC_V_I, PC_V_W, PC_V_B, PC_V_N };

PcStatus pc_sched_validate(const PcSchedule *s, int pp, int n_stages, int n, int *map_out) {
    PcStatus st = PC_OK;
    char head[512];
    if (s->n_ranks != pp)
        return pc_set_error(PC_ERR_INVALID,
                            "Schedule has incorrect number of ranks - expected %d, actual %d", pp,
                            (int)s->n_ranks);
    if (n < 1) return pc_set_error(PC_ERR_INVALID, "validate: n_microbatches must be >= 1, got %d", n);
    if (n_stages <= 0) n_stages = pc_schedule_max_stage(s) + 1;
    if (n_stages <= 0) return pc_set_error(PC_ERR_INVALID, "validate: the schedule has no actions");

    size_t cells = (size_t)n_stages * (size_t)n;
    unsigned char *seen = calloc(cells * PC_V_N, 1);
    int *count = calloc((size_t)n_stages * PC_V_N, sizeof(int));
    int *map = malloc((size_t)n_stages * sizeof(int));
    if (!seen || !count || !map) {
        st = pc_set_error(PC_ERR_OOM, "validate: out of memory");
        goto done;
    }
    for (int i = 0; i < n_stages; i++) map[i] = -1;

    for (int r = 0; r < s->n_ranks; r++) {
        for (int32_t step = 0; step < s->ranks[r].len; step++) {
            const PcAction *a = &s->ranks[r].items[step];
            if (a->type == PC_ACT_IDLE) continue;
            PcActionSub leaves[PC_ACTION_MAX_SUB];
            int nl = pc_action_leaves(a, leaves);
            for (int k = 0; k < nl; k++) {
                PcActionSub l = leaves[k];
                const char *tname = pc_act_type_name(l.type);
                if (l.stage < 0 || l.stage >= n_stages) {
                    snprintf(head, sizeof head, "Rank %d, step %d: %d%s uses stage %d outside [0, %d)",
                             r, (int)step, l.stage, tname, l.stage, n_stages);
                    st = pc_fail_with_grid(s, step, head);
                    goto done;
                }
                if (map[l.stage] == -1) {
                    map[l.stage] = r;
                } else if (map[l.stage] != r) {
                    snprintf(head, sizeof head,
                             "Rank %d, step %d: Stage %d is assigned to both rank %d and rank %d",
                             r, (int)step, l.stage, r, map[l.stage]);
                    st = pc_fail_with_grid(s, step, head);
                    goto done;
                }
                int kind;
                const char *what;
                switch (l.type) {
                case PC_ACT_F: kind = PC_V_F; what = "Forward"; break;
                case PC_ACT_I: kind = PC_V_I; what = "Backward Input"; break;
                case PC_ACT_W: kind = PC_V_W; what = "Backward Weight"; break;
                case PC_ACT_B: kind = PC_V_B; what = "Full Backward"; break;
                default: continue;
                }
                if (l.mb < 0 || l.mb >= n) {
                    snprintf(head, sizeof head,
                             "Rank %d, step %d: %s for stage %d has microbatch %d outside [0, %d)",
                             r, (int)step, what, l.stage, l.mb, n);
                    st = pc_fail_with_grid(s, step, head);
                    goto done;
                }
                size_t cell = (size_t)l.stage * (size_t)n + (size_t)l.mb;
                if (kind == PC_V_I || kind == PC_V_B) {
                    if (!seen[PC_V_F * cells + cell]) {
                        snprintf(head, sizeof head,
                                 "Rank %d, step %d: Running %s for stage %d, microbatch %d "
                                 "without first running Forward",
                                 r, (int)step, what, l.stage, l.mb);
                        st = pc_fail_with_grid(s, step, head);
                        goto done;
                    }
                } else if (kind == PC_V_W && !seen[PC_V_I * cells + cell]) {
                    snprintf(head, sizeof head,
                             "Rank %d, step %d: Running Backward Weight for stage %d, microbatch "
                             "%d without first running Backward Input",
                             r, (int)step, l.stage, l.mb);
                    st = pc_fail_with_grid(s, step, head);
                    goto done;
                }
                if (seen[(size_t)kind * cells + cell]) {
                    snprintf(head, sizeof head,
                             "Rank %d, step %d: %s for stage %d, microbatch %d runs more than once",
                             r, (int)step, what, l.stage, l.mb);
                    st = pc_fail_with_grid(s, step, head);
                    goto done;
                }
                if ((kind == PC_V_I || kind == PC_V_B) &&
                    seen[(size_t)(kind == PC_V_I ? PC_V_B : PC_V_I) * cells + cell]) {
                    snprintf(head, sizeof head,
                             "Rank %d, step %d: stage %d, microbatch %d has both a full backward "
                             "(B) and an input backward (I)",
                             r, (int)step, l.stage, l.mb);
                    st = pc_fail_with_grid(s, step, head);
                    goto done;
                }
                seen[(size_t)kind * cells + cell] = 1;
                count[l.stage * PC_V_N + kind]++;
            }
        }
    }
    for (int sid = 0; sid < n_stages; sid++) {
        int f = count[sid * PC_V_N + PC_V_F], i = count[sid * PC_V_N + PC_V_I];
        int w = count[sid * PC_V_N + PC_V_W], b = count[sid * PC_V_N + PC_V_B];
        if (f != n) {
            st = pc_set_error(PC_ERR_INVALID, "Got %d F microbatches for stage %d, expected %d", f, sid, n);
            goto done;
        }
        if (i != w) {
            st = pc_set_error(PC_ERR_INVALID,
                              "Invalid backward microbatches for stage %d: I and W must have equal "
                              "counts, but got I=%d, W=%d",
                              sid, i, w);
            goto done;
        }
        if (b + (i + w) / 2 != n) {
            st = pc_set_error(PC_ERR_INVALID,
                              "Invalid backward microbatches for stage %d: expected %d total "
                              "backwards, but got B=%d, I=%d, W=%d",
                              sid, n, b, i, w);
            goto done;
        }
    }
    if (map_out) memcpy(map_out, map, (size_t)n_stages * sizeof(int));
done:
    free(seen);
    free(count);
    free(map);
    return st;
}

/* action.c — schedule IR: action text form, parser, lists, schedules, CSV (see action.h).
 *
 * Text grammar (torch's): leaf = <stage digits><TYPE>[<microbatch digits>];
 * container = "(" leaf (";" leaf)* ")" "OVERLAP_F_B". Blank text is an idle slot.
 * Exports: everything declared in action.h.
 */
#include "action.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- action types ---- */

static const char *const pc_act_names[PC_ACT_COUNT] = {
    [PC_ACT_IDLE] = "",
    [PC_ACT_F] = "F",
    [PC_ACT_I] = "I",
    [PC_ACT_W] = "W",
    [PC_ACT_B] = "B",
    [PC_ACT_SEND_F] = "SEND_F",
    [PC_ACT_RECV_F] = "RECV_F",
    [PC_ACT_SEND_B] = "SEND_B",
    [PC_ACT_RECV_B] = "RECV_B",
    [PC_ACT_REDUCE_GRAD] = "REDUCE_GRAD",
    [PC_ACT_OVERLAP_F_B] = "OVERLAP_F_B",
    [PC_ACT_UNSHARD] = "UNSHARD",
    [PC_ACT_RESHARD] = "RESHARD",
};

const char *pc_act_type_name(PcActType t) {
    if ((int)t < 0 || t >= PC_ACT_COUNT) return "?";
    return pc_act_names[t];
}

int pc_act_type_from_name(const char *s, size_t len, PcActType *out) {
    for (int t = 1; t < PC_ACT_COUNT; t++) {
        const char *n = pc_act_names[t];
        if (strlen(n) == len && memcmp(n, s, len) == 0) {
            *out = (PcActType)t;
            return 0;
        }
    }
    return -1;
}

int pc_act_type_is_compute(PcActType t) {
    return t == PC_ACT_F || t == PC_ACT_I || t == PC_ACT_W || t == PC_ACT_B ||
           t == PC_ACT_OVERLAP_F_B;
}

int pc_act_type_is_comm(PcActType t) {
    return t == PC_ACT_SEND_F || t == PC_ACT_RECV_F || t == PC_ACT_SEND_B || t == PC_ACT_RECV_B;
}

/* ---- actions ---- */

PcAction pc_action_make(int32_t stage, PcActType type, int32_t mb) {
    PcAction a;
    memset(&a, 0, sizeof a);
    a.stage = stage;
    a.type = type;
    a.mb = mb;
    return a;
}

PcAction pc_action_idle(void) { return pc_action_make(-1, PC_ACT_IDLE, -1); }

PcAction pc_action_overlap(PcActionSub fwd, PcActionSub bwd) {
    PcAction a = pc_action_make(-1, PC_ACT_OVERLAP_F_B, -1);
    a.n_sub = 2;
    a.sub[0] = fwd;
    a.sub[1] = bwd;
    return a;
}

int pc_action_equal(const PcAction *a, const PcAction *b) {
    if (a->type != b->type || a->stage != b->stage || a->mb != b->mb || a->n_sub != b->n_sub)
        return 0;
    for (int i = 0; i < a->n_sub; i++) {
        if (a->sub[i].stage != b->sub[i].stage || a->sub[i].mb != b->sub[i].mb ||
            a->sub[i].type != b->sub[i].type)
            return 0;
    }
    return 1;
}

PcActionSub pc_action_as_sub(const PcAction *a) {
    PcActionSub s = {a->stage, a->mb, a->type};
    return s;
}

PcAction pc_action_from_sub(PcActionSub s) { return pc_action_make(s.stage, s.type, s.mb); }

int pc_action_leaves(const PcAction *a, PcActionSub out[PC_ACTION_MAX_SUB]) {
    if (a->n_sub > 0) {
        for (int i = 0; i < a->n_sub; i++) out[i] = a->sub[i];
        return a->n_sub;
    }
    out[0] = pc_action_as_sub(a);
    return 1;
}

/* ---- text form ---- */

static int pc_leaf_format(int32_t stage, PcActType type, int32_t mb, char *buf, size_t cap) {
    if (mb >= 0) return snprintf(buf, cap, "%d%s%d", (int)stage, pc_act_type_name(type), (int)mb);
    return snprintf(buf, cap, "%d%s", (int)stage, pc_act_type_name(type));
}

int pc_action_format(const PcAction *a, char *buf, size_t cap) {
    if (cap > 0) buf[0] = '\0';
    if (a->type == PC_ACT_IDLE) return 0;
    if (a->n_sub == 0) return pc_leaf_format(a->stage, a->type, a->mb, buf, cap);

    char tmp[PC_ACTION_TEXT_MAX];
    size_t pos = 0;
    tmp[pos++] = '(';
    for (int i = 0; i < a->n_sub; i++) {
        if (i > 0) tmp[pos++] = ';';
        int n = pc_leaf_format(a->sub[i].stage, a->sub[i].type, a->sub[i].mb, tmp + pos,
                               sizeof tmp - pos);
        if (n < 0 || (size_t)n >= sizeof tmp - pos) return -1;
        pos += (size_t)n;
    }
    int n = snprintf(tmp + pos, sizeof tmp - pos, ")%s", pc_act_type_name(a->type));
    if (n < 0 || (size_t)n >= sizeof tmp - pos) return -1;
    pos += (size_t)n;
    if (cap > 0) {
        size_t k = pos < cap - 1 ? pos : cap - 1;
        memcpy(buf, tmp, k);
        buf[k] = '\0';
    }
    return (int)pos;
}

/* ---- parser ---- */

static PcStatus pc_parse_error(const char *s, size_t len) {
    return pc_set_error(PC_ERR_RUNTIME,
                        "Invalid action string: %.*s, should be formatted as "
                        "[stage][action type][(microbatch)] e.g. 2F0",
                        (int)(len > 200 ? 200 : len), s);
}

/* Parse digits at s[*pos..len); -1 if none, -2 on overflow. */
static int64_t pc_parse_uint(const char *s, size_t len, size_t *pos) {
    size_t p = *pos;
    int64_t v = 0;
    if (p >= len || !isdigit((unsigned char)s[p])) return -1;
    while (p < len && isdigit((unsigned char)s[p])) {
        v = v * 10 + (s[p] - '0');
        if (v > INT32_MAX) return -2;
        p++;
    }
    *pos = p;
    return v;
}

/* A leaf on s[0..len) (already trimmed). */
static int pc_parse_leaf(const char *s, size_t len, PcActionSub *out) {
    size_t pos = 0;
    int64_t stage = pc_parse_uint(s, len, &pos);
    if (stage < 0) return -1;
    /* type: the longest name that prefixes the rest (names never prefix one another) */
    size_t best = 0;
    PcActType type = PC_ACT_IDLE;
    for (int t = 1; t < PC_ACT_COUNT; t++) {
        size_t n = strlen(pc_act_names[t]);
        if (n > best && pos + n <= len && memcmp(s + pos, pc_act_names[t], n) == 0) {
            best = n;
            type = (PcActType)t;
        }
    }
    if (best == 0 || type == PC_ACT_OVERLAP_F_B) return -1;
    pos += best;
    int64_t mb = -1;
    if (pos < len) {
        mb = pc_parse_uint(s, len, &pos);
        if (mb < 0) return -1;
    }
    if (pos != len) return -1;
    out->stage = (int32_t)stage;
    out->type = type;
    out->mb = (int32_t)mb;
    return 0;
}

static void pc_trim(const char **s, size_t *len) {
    while (*len > 0 && isspace((unsigned char)(*s)[0])) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)(*s)[*len - 1])) (*len)--;
}

PcStatus pc_action_parse_n(const char *text, size_t len, PcAction *out) {
    const char *s = text;
    pc_trim(&s, &len);
    if (len == 0) {
        *out = pc_action_idle();
        return PC_OK;
    }
    if (s[0] == '(') {
        const char *close = memchr(s, ')', len);
        if (!close) return pc_parse_error(s, len);
        size_t inner_len = (size_t)(close - s) - 1;
        const char *tail = close + 1;
        size_t tail_len = len - (size_t)(tail - s);
        PcActType ctype;
        if (pc_act_type_from_name(tail, tail_len, &ctype) != 0 || ctype != PC_ACT_OVERLAP_F_B)
            return pc_parse_error(s, len);
        PcAction a = pc_action_make(-1, ctype, -1);
        const char *p = s + 1;
        const char *end = p + inner_len;
        while (p <= end) {
            const char *semi = memchr(p, ';', (size_t)(end - p));
            const char *piece_end = semi ? semi : end;
            const char *piece = p;
            size_t piece_len = (size_t)(piece_end - p);
            pc_trim(&piece, &piece_len);
            if (piece_len > 0) {
                if (a.n_sub >= PC_ACTION_MAX_SUB) return pc_parse_error(s, len);
                if (pc_parse_leaf(piece, piece_len, &a.sub[a.n_sub]) != 0)
                    return pc_parse_error(s, len);
                a.n_sub++;
            }
            if (!semi) break;
            p = semi + 1;
        }
        if (a.n_sub == 0) return pc_parse_error(s, len);
        *out = a;
        return PC_OK;
    }
    PcActionSub leaf;
    if (pc_parse_leaf(s, len, &leaf) != 0) return pc_parse_error(s, len);
    *out = pc_action_from_sub(leaf);
    return PC_OK;
}

PcStatus pc_action_parse(const char *text, PcAction *out) {
    return pc_action_parse_n(text, strlen(text), out);
}

/* ---- lists and schedules ---- */

void pc_action_list_init(PcActionList *l) {
    l->items = NULL;
    l->len = 0;
    l->cap = 0;
}

void pc_action_list_free(PcActionList *l) {
    free(l->items);
    pc_action_list_init(l);
}

PcStatus pc_action_list_push(PcActionList *l, PcAction a) {
    if (l->len == l->cap) {
        int32_t cap = l->cap ? l->cap * 2 : 16;
        PcAction *p = realloc(l->items, (size_t)cap * sizeof *p);
        if (!p) return pc_set_error(PC_ERR_OOM, "schedule: out of memory growing an action list");
        l->items = p;
        l->cap = cap;
    }
    l->items[l->len++] = a;
    return PC_OK;
}

PcStatus pc_action_list_copy(const PcActionList *src, PcActionList *dst) {
    pc_action_list_init(dst);
    for (int32_t i = 0; i < src->len; i++) {
        PcStatus st = pc_action_list_push(dst, src->items[i]);
        if (st != PC_OK) {
            pc_action_list_free(dst);
            return st;
        }
    }
    return PC_OK;
}

PcStatus pc_schedule_init(PcSchedule *s, int32_t n_ranks) {
    s->n_ranks = 0;
    s->ranks = NULL;
    if (n_ranks < 0) return pc_set_error(PC_ERR_INVALID, "schedule: n_ranks=%d < 0", (int)n_ranks);
    if (n_ranks == 0) return PC_OK;
    s->ranks = calloc((size_t)n_ranks, sizeof *s->ranks);
    if (!s->ranks) return pc_set_error(PC_ERR_OOM, "schedule: out of memory for %d ranks", (int)n_ranks);
    s->n_ranks = n_ranks;
    return PC_OK;
}

void pc_schedule_free(PcSchedule *s) {
    if (!s) return;
    for (int32_t r = 0; r < s->n_ranks; r++) pc_action_list_free(&s->ranks[r]);
    free(s->ranks);
    s->ranks = NULL;
    s->n_ranks = 0;
}

PcStatus pc_schedule_copy(const PcSchedule *src, PcSchedule *dst) {
    PC_TRY(pc_schedule_init(dst, src->n_ranks));
    for (int32_t r = 0; r < src->n_ranks; r++) {
        PcStatus st = pc_action_list_copy(&src->ranks[r], &dst->ranks[r]);
        if (st != PC_OK) {
            pc_schedule_free(dst);
            return st;
        }
    }
    return PC_OK;
}

int32_t pc_schedule_max_stage(const PcSchedule *s) {
    int32_t m = -1;
    for (int32_t r = 0; r < s->n_ranks; r++) {
        for (int32_t i = 0; i < s->ranks[r].len; i++) {
            PcActionSub leaves[PC_ACTION_MAX_SUB];
            const PcAction *a = &s->ranks[r].items[i];
            if (a->type == PC_ACT_IDLE) continue;
            int n = pc_action_leaves(a, leaves);
            for (int k = 0; k < n; k++)
                if (leaves[k].stage > m) m = leaves[k].stage;
        }
    }
    return m;
}

int32_t pc_schedule_max_len(const PcSchedule *s) {
    int32_t m = 0;
    for (int32_t r = 0; r < s->n_ranks; r++)
        if (s->ranks[r].len > m) m = s->ranks[r].len;
    return m;
}

/* ---- CSV ---- */

/* Growable byte buffer for CSV output and cell unquoting. */
typedef struct PcBuf {
    char *p;
    size_t len, cap;
} PcBuf;

static PcStatus pc_buf_put(PcBuf *b, const char *s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return pc_set_error(PC_ERR_OOM, "schedule csv: out of memory");
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return PC_OK;
}

PcStatus pc_schedule_from_csv(const char *text, size_t len, PcSchedule *out) {
    PcStatus st = PC_OK;
    PcBuf cell = {0};
    PcSchedule s;
    PC_TRY(pc_schedule_init(&s, 0));
    size_t pos = 0;
    int32_t row = 0;
    while (pos < len) {
        /* one row: grow the schedule by one rank */
        PcActionList *grown = realloc(s.ranks, (size_t)(s.n_ranks + 1) * sizeof *grown);
        if (!grown) {
            st = pc_set_error(PC_ERR_OOM, "schedule csv: out of memory");
            goto fail;
        }
        s.ranks = grown;
        pc_action_list_init(&s.ranks[s.n_ranks]);
        s.n_ranks++;
        PcActionList *list = &s.ranks[s.n_ranks - 1];

        int at_line_end = 0;
        int blank_row = (text[pos] == '\n' || text[pos] == '\r');
        int32_t col = 0;
        while (!at_line_end) {
            cell.len = 0;
            PC_TRY_GOTO(st, pc_buf_put(&cell, "", 0));
            if (pos < len && text[pos] == '"') { /* quoted cell */
                pos++;
                for (;;) {
                    if (pos >= len) {
                        st = pc_set_error(PC_ERR_RUNTIME,
                                          "schedule csv: unterminated quoted cell in row %d",
                                          (int)row);
                        goto fail;
                    }
                    if (text[pos] == '"') {
                        if (pos + 1 < len && text[pos + 1] == '"') {
                            PC_TRY_GOTO(st, pc_buf_put(&cell, "\"", 1));
                            pos += 2;
                            continue;
                        }
                        pos++;
                        break;
                    }
                    PC_TRY_GOTO(st, pc_buf_put(&cell, text + pos, 1));
                    pos++;
                }
            }
            while (pos < len && text[pos] != ',' && text[pos] != '\n' && text[pos] != '\r') {
                PC_TRY_GOTO(st, pc_buf_put(&cell, text + pos, 1));
                pos++;
            }
            if (pos >= len) {
                at_line_end = 1;
            } else if (text[pos] == ',') {
                pos++;
            } else { /* \r, \n or \r\n */
                if (text[pos] == '\r') pos++;
                if (pos < len && text[pos] == '\n') pos++;
                at_line_end = 1;
            }
            if (blank_row && at_line_end && col == 0) break; /* csv.reader yields [] */
            PcAction a;
            st = pc_action_parse_n(cell.p, cell.len, &a);
            if (st != PC_OK) {
                char msg[512];
                snprintf(msg, sizeof msg, "%s", pc_last_error());
                st = pc_set_error(st, "schedule csv row %d (rank %d), column %d: %s", (int)row,
                                  (int)row, (int)col, msg);
                goto fail;
            }
            PC_TRY_GOTO(st, pc_action_list_push(list, a));
            col++;
        }
        row++;
    }
    free(cell.p);
    *out = s;
    return PC_OK;
fail:
    free(cell.p);
    pc_schedule_free(&s);
    return st;
}

PcStatus pc_schedule_to_csv(const PcSchedule *s, char **out, size_t *out_len) {
    PcStatus st = PC_OK;
    PcBuf b = {0};
    PC_TRY_GOTO(st, pc_buf_put(&b, "", 0));
    for (int32_t r = 0; r < s->n_ranks; r++) {
        const PcActionList *l = &s->ranks[r];
        if (l->len == 1 && l->items[0].type == PC_ACT_IDLE) {
            /* csv.writer quotes a lone empty field so the row is not blank */
            PC_TRY_GOTO(st, pc_buf_put(&b, "\"\"", 2));
        } else {
            for (int32_t i = 0; i < l->len; i++) {
                char txt[PC_ACTION_TEXT_MAX];
                if (i > 0) PC_TRY_GOTO(st, pc_buf_put(&b, ",", 1));
                int n = pc_action_format(&l->items[i], txt, sizeof txt);
                if (n < 0 || (size_t)n >= sizeof txt) {
                    st = pc_set_error(PC_ERR_INVALID, "schedule csv: action too long (rank %d, step %d)",
                                      (int)r, (int)i);
                    goto fail;
                }
                PC_TRY_GOTO(st, pc_buf_put(&b, txt, (size_t)n));
            }
        }
        PC_TRY_GOTO(st, pc_buf_put(&b, "\r\n", 2));
    }
    *out = b.p;
    if (out_len) *out_len = b.len;
    return PC_OK;
fail:
    free(b.p);
    return st;
}

PcStatus pc_schedule_load_csv(const char *path, PcSchedule *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return pc_set_error(PC_ERR_INVALID, "load_csv: cannot open '%s': %s", path, strerror(errno));
    PcBuf b = {0};
    PcStatus st = PC_OK;
    char chunk[4096];
    size_t n;
    PC_TRY_GOTO(st, pc_buf_put(&b, "", 0));
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) PC_TRY_GOTO(st, pc_buf_put(&b, chunk, n));
    if (ferror(f)) {
        st = pc_set_error(PC_ERR_RUNTIME, "load_csv: error reading '%s'", path);
        goto fail;
    }
    fclose(f);
    f = NULL;
    st = pc_schedule_from_csv(b.p, b.len, out);
    free(b.p);
    return st;
fail:
    if (f) fclose(f);
    free(b.p);
    return st;
}

PcStatus pc_schedule_dump_csv(const char *path, const PcSchedule *s) {
    char *text = NULL;
    size_t len = 0;
    PC_TRY(pc_schedule_to_csv(s, &text, &len));
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(text);
        return pc_set_error(PC_ERR_INVALID, "dump_csv: cannot open '%s': %s", path, strerror(errno));
    }
    size_t w = fwrite(text, 1, len, f);
    int close_rc = fclose(f);
    free(text);
    if (w != len || close_rc != 0)
        return pc_set_error(PC_ERR_RUNTIME, "dump_csv: error writing '%s'", path);
    return PC_OK;
}

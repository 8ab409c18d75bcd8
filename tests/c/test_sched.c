/* test_sched.c — standalone checks of csrc/sched/ (action IR, generators, lowering,
 * validator, simulator) against torch's documented examples and test expectations.
 *
 * Build and run:
 *   gcc -std=c11 -O2 -Wall -Wextra -Icsrc tests/c/test_sched.c csrc/sched/[a-z]*.c \
 *       csrc/core/status.c -lm -o /tmp/test_sched && /tmp/test_sched
 * Exit status 0 when every check passes; failures are listed on stderr.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/status.h"
#include "sched/action.h"
#include "sched/generators.h"
#include "sched/lower.h"
#include "sched/simulate.h"
#include "sched/validate.h"

static int g_checks, g_failures;

#define CHECK(cond, ...)                                                \
    do {                                                                \
        g_checks++;                                                     \
        if (!(cond)) {                                                  \
            g_failures++;                                               \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);        \
            fprintf(stderr, __VA_ARGS__);                               \
            fprintf(stderr, "\n");                                      \
        }                                                               \
    } while (0)

/* ---- helpers: schedules as space-separated rows, "_" = idle ---- */

static void list_from_row(const char *row, PcActionList *l) {
    pc_action_list_init(l);
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", row);
    for (char *tok = strtok(buf, " "); tok; tok = strtok(NULL, " ")) {
        PcAction a;
        if (strcmp(tok, "_") == 0) {
            a = pc_action_idle();
        } else if (pc_action_parse(tok, &a) != PC_OK) {
            fprintf(stderr, "bad action in test data: %s\n", tok);
            exit(2);
        }
        pc_action_list_push(l, a);
    }
}

static PcSchedule sched_from_rows(const char *const *rows, int n) {
    PcSchedule s;
    pc_schedule_init(&s, n);
    for (int r = 0; r < n; r++) list_from_row(rows[r], &s.ranks[r]);
    return s;
}

static char *row_str(const PcActionList *l) {
    size_t cap = 64 + (size_t)l->len * PC_ACTION_TEXT_MAX;
    char *out = malloc(cap);
    size_t pos = 0;
    out[0] = '\0';
    for (int i = 0; i < l->len; i++) {
        char txt[PC_ACTION_TEXT_MAX];
        pc_action_format(&l->items[i], txt, sizeof txt);
        pos += (size_t)snprintf(out + pos, cap - pos, "%s%s", i ? " " : "", txt[0] ? txt : "_");
    }
    return out;
}

static void check_row(const PcActionList *l, const char *expected, const char *what, int rank) {
    char *got = row_str(l);
    CHECK(strcmp(got, expected) == 0, "%s rank %d:\n  got      %s\n  expected %s", what, rank, got,
          expected);
    free(got);
}

static void check_sched(const PcSchedule *s, const char *const *rows, int n, const char *what) {
    CHECK(s->n_ranks == n, "%s: %d ranks, expected %d", what, (int)s->n_ranks, n);
    for (int r = 0; r < n && r < s->n_ranks; r++) check_row(&s->ranks[r], rows[r], what, r);
}

static void check_generated(const char *name, int pp, int n, const char *const *rows) {
    PcSchedKind k;
    PcSchedule s;
    CHECK(pc_sched_kind_from_name(name, &k) == PC_OK, "lookup %s", name);
    PcStatus st = pc_sched_generate(k, pp, 0, n, 0, &s);
    CHECK(st == PC_OK, "%s pp=%d n=%d: %s", name, pp, n, pc_last_error());
    if (st != PC_OK) return;
    char what[128];
    snprintf(what, sizeof what, "%s pp=%d n=%d", name, pp, n);
    check_sched(&s, rows, pp, what);
    pc_schedule_free(&s);
}

/* ---- action text ---- */

static void test_action_text(void) {
    const char *good[] = {"1F0", "2I1", "0W3", "0B3", "1UNSHARD", "3RESHARD", "2SEND_B2", "1RECV_F1",
                          "0REDUCE_GRAD", "3SEND_F1", "2RECV_B0", "(0F3;3B1)OVERLAP_F_B", "12F345", "1F"};
    for (size_t i = 0; i < sizeof good / sizeof *good; i++) {
        PcAction a;
        char txt[PC_ACTION_TEXT_MAX];
        CHECK(pc_action_parse(good[i], &a) == PC_OK, "parse %s: %s", good[i], pc_last_error());
        pc_action_format(&a, txt, sizeof txt);
        CHECK(strcmp(txt, good[i]) == 0, "round trip %s -> %s", good[i], txt);
    }
    PcAction a;
    CHECK(pc_action_parse(" 2SEND_B3 ", &a) == PC_OK && a.stage == 2 && a.type == PC_ACT_SEND_B &&
              a.mb == 3,
          "parse with spaces");
    CHECK(pc_action_parse("1UNSHARD", &a) == PC_OK && a.mb == -1 && a.type == PC_ACT_UNSHARD, "UNSHARD mb");
    CHECK(pc_action_parse("(0F3;3B1)OVERLAP_F_B", &a) == PC_OK && a.stage == -1 && a.n_sub == 2 &&
              a.sub[0].type == PC_ACT_F && a.sub[0].mb == 3 && a.sub[1].stage == 3 &&
              a.sub[1].type == PC_ACT_B && a.sub[1].mb == 1,
          "overlap fields");
    CHECK(pc_action_parse("   ", &a) == PC_OK && a.type == PC_ACT_IDLE, "blank is idle");
    const char *bad[] = {"F0", "1X0", "1F0x", "-1F0", "(0F3;3B1)", "(0F3;3B1)F", "()OVERLAP_F_B",
                         "(0F3;3X1)OVERLAP_F_B", "1OVERLAP_F_B", "99999999999F0"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        PcStatus st = pc_action_parse(bad[i], &a);
        CHECK(st == PC_ERR_RUNTIME && strstr(pc_last_error(), "Invalid action string"),
              "parse of %s should fail (status %d)", bad[i], (int)st);
    }
}

/* ---- CSV ---- */

static void test_csv(void) {
    const char *text = "0F0,,0B0\r\n\"\"\n\n1F0,\"1B0\",(1F1;1B1)OVERLAP_F_B\n";
    PcSchedule s;
    CHECK(pc_schedule_from_csv(text, strlen(text), &s) == PC_OK, "csv parse: %s", pc_last_error());
    CHECK(s.n_ranks == 4, "csv ranks %d", (int)s.n_ranks);
    if (s.n_ranks == 4) {
        check_row(&s.ranks[0], "0F0 _ 0B0", "csv", 0);
        check_row(&s.ranks[1], "_", "csv", 1);
        CHECK(s.ranks[2].len == 0, "blank row is an empty rank");
        check_row(&s.ranks[3], "1F0 1B0 (1F1;1B1)OVERLAP_F_B", "csv", 3);
    }
    char *out = NULL;
    size_t len = 0;
    CHECK(pc_schedule_to_csv(&s, &out, &len) == PC_OK, "csv dump");
    CHECK(out && strcmp(out, "0F0,,0B0\r\n\"\"\r\n\r\n1F0,1B0,(1F1;1B1)OVERLAP_F_B\r\n") == 0,
          "csv text: %s", out ? out : "(null)");
    PcSchedule back;
    CHECK(pc_schedule_from_csv(out, len, &back) == PC_OK, "csv reparse");
    for (int r = 0; r < 4 && r < back.n_ranks; r++) {
        char *a = row_str(&s.ranks[r]), *b = row_str(&back.ranks[r]);
        CHECK(strcmp(a, b) == 0, "csv round trip rank %d", r);
        free(a);
        free(b);
    }
    free(out);
    pc_schedule_free(&back);

    const char *path = "/tmp/pipec_test_sched.csv";
    CHECK(pc_schedule_dump_csv(path, &s) == PC_OK, "dump file: %s", pc_last_error());
    CHECK(pc_schedule_load_csv(path, &back) == PC_OK && back.n_ranks == 4, "load file");
    pc_schedule_free(&back);
    remove(path);
    CHECK(pc_schedule_load_csv("/nonexistent/x.csv", &back) == PC_ERR_INVALID, "missing file");
    const char *badcsv = "0F0,zz\n";
    CHECK(pc_schedule_from_csv(badcsv, strlen(badcsv), &back) == PC_ERR_RUNTIME &&
              strstr(pc_last_error(), "row 0") && strstr(pc_last_error(), "column 1"),
          "bad csv cell located: %s", pc_last_error());
    pc_schedule_free(&s);
}

/* ---- generators: torch's documented examples and test artifacts ---- */

static void test_generators_examples(void) {
    const char *gpipe[] = {"0F0 0F1 0F2 0F3 0B0 0B1 0B2 0B3 0REDUCE_GRAD",
                           "1F0 1F1 1F2 1F3 1B0 1B1 1B2 1B3 1REDUCE_GRAD"};
    check_generated("GPipe", 2, 4, gpipe);
    /* torch's informational 1F1B order numbers the last rank's forwards from 1 */
    const char *f1b[] = {"0F0 0F1 0B0 0F2 0B1 0F3 0B2 0B3 0REDUCE_GRAD",
                         "1F1 1B0 1F2 1B1 1F3 1B2 1F4 1B3 1REDUCE_GRAD"};
    check_generated("1F1B", 2, 4, f1b);
    const char *il[] = {
        "0F0 0F1 2F0 2F1 _ _ 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 _ 2B2 _ 2B3 _ 0B2 _ 0B3",
        "_ 1F0 1F1 _ 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 _ 1B2 _ 1B3"};
    check_generated("Interleaved1F1B", 2, 4, il);
    const char *bfs[] = {"0F0 0F1 0F2 0F3 2F0 2F1 2F2 2F3 _ _ 2B3 2B2 2B1 2B0 0B3 0B2 0B1 0B0",
                         "_ 1F0 1F1 1F2 1F3 3F0 3F1 3F2 3F3 3B3 3B2 3B1 3B0 1B3 1B2 1B1 1B0"};
    check_generated("LoopedBFS", 2, 4, bfs);
    const char *zb[] = {
        "0F0 0F1 2F0 _ 2F1 2I0 2W0 0F2 2I1 2W1 0F3 0I0 0W0 2F2 0I1 0W1 2F3 2I2 2W2 2I3 2W3 0I2 0W2 0I3 0W3",
        "_ 1F0 1F1 3F0 3I0 3F1 3I1 3W0 1F2 1I0 3W1 1F3 1I1 1W0 3F2 3I2 1W1 3F3 3I3 3W2 1I2 3W3 1I3 1W2 1W3"};
    check_generated("InterleavedZeroBubble", 2, 4, zb);
    const char *zbv[] = {
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 3I1 3W1 0F3 0I0 0W0 3F2 3I2 3W2 0I1 0W1 3F3 3I3 3W3 0I2 0W2 0I3 0W3",
        "_ 1F0 2F0 1F1 2F1 2I0 2W0 1F2 1I0 1W0 2F2 2I1 2W1 1F3 1I1 1W1 2F3 2I2 2W2 1I2 2I3 1I3 1W2 2W3 1W3"};
    check_generated("ZBVZeroBubble", 2, 4, zbv);
    const char *dpv[] = {
        "0F0 0F1 0F2 3F0 3I0 3W0 3F1 (0F3;3B1)OVERLAP_F_B (3F2;0B0)OVERLAP_F_B 3B2 "
        "(3F3;0B1)OVERLAP_F_B 3B3 0I2 0W2 0I3 0W3",
        "1F0 2F0 1F1 2F1 1F2 2B0 (2F2;1B0)OVERLAP_F_B (1F3;2B1)OVERLAP_F_B (2F3;1B1)OVERLAP_F_B 2B2 "
        "1B2 2I3 1I3 2W3 1W3"};
    check_generated("DualPipeV", 2, 4, dpv);

    /* torch's test artifact dualpipev_4rank_10mb.csv */
    const char *dpv4[] = {
        "0F0 0F1 0F2 0F3 0F4 0F5 0F6 7F0 7I0 7W0 7F1 7I1 7W1 7F2 7I2 7W2 7F3 (0F7;7B3)OVERLAP_F_B "
        "(7F4;0B0)OVERLAP_F_B (0F8;7B4)OVERLAP_F_B (7F5;0B1)OVERLAP_F_B (0F9;7B5)OVERLAP_F_B "
        "(7F6;0B2)OVERLAP_F_B 7B6 (7F7;0B3)OVERLAP_F_B 7B7 (7F8;0B4)OVERLAP_F_B 7B8 "
        "(7F9;0B5)OVERLAP_F_B 7B9 0I6 0W6 0I7 0W7 0I8 0W8 0I9 0W9",
        "1F0 1F1 1F2 1F3 1F4 6F0 1F5 6F1 6I0 6W0 6F2 6I1 6W1 6F3 (1F6;6B2)OVERLAP_F_B "
        "(6F4;1B0)OVERLAP_F_B (1F7;6B3)OVERLAP_F_B (6F5;1B1)OVERLAP_F_B (1F8;6B4)OVERLAP_F_B "
        "(6F6;1B2)OVERLAP_F_B (1F9;6B5)OVERLAP_F_B (6F7;1B3)OVERLAP_F_B 6B6 (6F8;1B4)OVERLAP_F_B "
        "6B7 (6F9;1B5)OVERLAP_F_B 6B8 1B6 6I9 1I7 6W9 1I8 1W7 1I9 1W8 1W9",
        "2F0 2F1 2F2 5F0 2F3 5F1 2F4 5F2 5I0 5W0 5F3 (2F5;5B1)OVERLAP_F_B (5F4;2B0)OVERLAP_F_B "
        "(2F6;5B2)OVERLAP_F_B (5F5;2B1)OVERLAP_F_B (2F7;5B3)OVERLAP_F_B (5F6;2B2)OVERLAP_F_B "
        "(2F8;5B4)OVERLAP_F_B (5F7;2B3)OVERLAP_F_B (2F9;5B5)OVERLAP_F_B (5F8;2B4)OVERLAP_F_B 5B6 "
        "(5F9;2B5)OVERLAP_F_B 5B7 2B6 5B8 2I7 5I9 2I8 2W7 2I9 5W9 2W8 2W9",
        "3F0 4F0 3F1 4F1 3F2 4F2 3F3 4F3 3F4 4B0 (4F4;3B0)OVERLAP_F_B (3F5;4B1)OVERLAP_F_B "
        "(4F5;3B1)OVERLAP_F_B (3F6;4B2)OVERLAP_F_B (4F6;3B2)OVERLAP_F_B (3F7;4B3)OVERLAP_F_B "
        "(4F7;3B3)OVERLAP_F_B (3F8;4B4)OVERLAP_F_B (4F8;3B4)OVERLAP_F_B (3F9;4B5)OVERLAP_F_B "
        "(4F9;3B5)OVERLAP_F_B 4B6 3B6 4B7 3B7 4I8 3I8 4I9 3I9 4W8 3W8 4W9 3W9"};
    check_generated("DualPipeV", 4, 10, dpv4);
}

/* torch's test_csv: ZB1P (2 ranks x 2 stages, 8 mb) merged and lowered; 113 simulated steps */
static void test_zb1p_lowering(void) {
    const char *comms[] = {
        "0F0 0SEND_F0 2RECV_F0 0F1 0SEND_F1 2RECV_F1 2F0 2SEND_F0 2F1 2SEND_F1 2RECV_B0 2B0 2SEND_B0 "
        "0F2 0SEND_F2 2RECV_B1 2B1 2SEND_B1 0F3 0SEND_F3 2RECV_F2 0RECV_B0 0B0 2F2 2SEND_F2 2RECV_F3 "
        "0RECV_B1 0B1 2F3 2SEND_F3 2RECV_B2 2B2 2SEND_B2 0F4 0SEND_F4 2RECV_B3 2B3 2SEND_B3 0F5 "
        "0SEND_F5 2RECV_F4 0RECV_B2 0B2 2F4 2SEND_F4 2RECV_F5 0RECV_B3 0B3 2F5 2SEND_F5 2RECV_B4 2B4 "
        "2SEND_B4 0F6 0SEND_F6 2RECV_B5 2B5 2SEND_B5 0F7 0SEND_F7 2RECV_F6 0RECV_B4 0B4 2F6 2SEND_F6 "
        "2RECV_F7 0RECV_B5 0B5 2F7 2SEND_F7 2RECV_B6 2B6 2SEND_B6 2RECV_B7 2B7 2SEND_B7 0RECV_B6 0B6 "
        "0RECV_B7 0B7",
        "1RECV_F0 1F0 1SEND_F0 1RECV_F1 1F1 1SEND_F1 3RECV_F0 3F0 3RECV_F1 3I0 3SEND_B0 1RECV_B0 3F1 "
        "1RECV_F2 3I1 3SEND_B1 1RECV_B1 3W0 1RECV_F3 1F2 1SEND_F2 1I0 1SEND_B0 3W1 3RECV_F2 1F3 "
        "1SEND_F3 1I1 1SEND_B1 1W0 3RECV_F3 3F2 3I2 3SEND_B2 1RECV_B2 1W1 1RECV_F4 3F3 3I3 3SEND_B3 "
        "1RECV_B3 3W2 1RECV_F5 1F4 1SEND_F4 1I2 1SEND_B2 3W3 3RECV_F4 1F5 1SEND_F5 1I3 1SEND_B3 1W2 "
        "3RECV_F5 3F4 3I4 3SEND_B4 1RECV_B4 1W3 1RECV_F6 3F5 3I5 3SEND_B5 1RECV_B5 3W4 1RECV_F7 1F6 "
        "1SEND_F6 1I4 1SEND_B4 3W5 3RECV_F6 1F7 1SEND_F7 1I5 1SEND_B5 1W4 3RECV_F7 3F6 3I6 3SEND_B6 "
        "1RECV_B6 1W5 3F7 3I7 3SEND_B7 1RECV_B7 3W6 1I6 1SEND_B6 3W7 1I7 1SEND_B7 1W6 1W7"};
    PcSchedule gen, merged, lowered;
    CHECK(pc_sched_generate(PC_SCHED_INTERLEAVED_ZB, 2, 2, 8, 0, &gen) == PC_OK, "zb gen");
    pc_schedule_init(&merged, 2);
    for (int r = 0; r < 2; r++) {
        pc_action_list_free(&merged.ranks[r]);
        CHECK(pc_sched_merge_bw(&gen.ranks[r], &merged.ranks[r]) == PC_OK, "merge");
    }
    int map[4] = {0, 1, 0, 1};
    CHECK(pc_sched_add_send_recv(&merged, map, 4, &lowered) == PC_OK, "send_recv: %s", pc_last_error());
    check_sched(&lowered, comms, 2, "zb1p lowered");
    int32_t steps = 0;
    CHECK(pc_sched_simulate_steps(&lowered, map, 4, &steps, NULL) == PC_OK, "steps sim");
    CHECK(steps == 113, "zb1p simulated steps %d, expected 113", (int)steps);
    pc_schedule_free(&gen);
    pc_schedule_free(&merged);
    pc_schedule_free(&lowered);
}

/* ---- lowering passes (torch's TestScheduleLowering expectations) ---- */

static void check_pass(const char *in, const char *expected, int which, int n) {
    PcActionList l, out;
    list_from_row(in, &l);
    PcStatus st = which == 0   ? pc_sched_add_unshard_reshard(&l, 3, &out)
                  : which == 1 ? pc_sched_add_reduce_grad(&l, n, &out)
                               : pc_sched_merge_bw(&l, &out);
    CHECK(st == PC_OK, "pass %d: %s", which, pc_last_error());
    if (st == PC_OK) check_row(&out, expected, which == 0 ? "unshard" : which == 1 ? "reduce_grad" : "merge_bw", 0);
    pc_action_list_free(&l);
    pc_action_list_free(&out);
}

static void test_passes(void) {
    check_pass("0F0 0F1 _ 0B0 0B1", "0UNSHARD 0F0 0F1 0B0 0B1 0RESHARD", 0, 0);
    check_pass("0F0 0F1 1F0 1F1 1B0 1B1 0B0 0B1",
               "0UNSHARD 1UNSHARD 0F0 0F1 1F0 1F1 1B0 1B1 1RESHARD 0B0 0B1 0RESHARD", 0, 0);
    check_pass("0F0 1F0 2F0 3F0 3B0 2B0 1B0 0B0",
               "0UNSHARD 1UNSHARD 2UNSHARD 0F0 0RESHARD 3UNSHARD 1F0 2F0 3F0 3B0 3RESHARD 0UNSHARD "
               "2B0 2RESHARD 1B0 1RESHARD 0B0 0RESHARD",
               0, 0);
    check_pass("0F0 0F1 0B0 0B1", "0F0 0F1 0B0 0B1 0REDUCE_GRAD", 1, 2);
    check_pass("0F0 0F1 1F0 1F1 1B0 1B1 0B0 0B1",
               "0F0 0F1 1F0 1F1 1B0 1B1 1REDUCE_GRAD 0B0 0B1 0REDUCE_GRAD", 1, 2);
    check_pass("0F0 0F1 0I0 0I1 0W0 _ 0W1", "0F0 0F1 0I0 0I1 0W0 0W1 0REDUCE_GRAD", 1, 2);
    check_pass("0F0 3F0 (0F1;3B0)OVERLAP_F_B 3F1 (3B1;0B0)OVERLAP_F_B 0B1",
               "0F0 3F0 (0F1;3B0)OVERLAP_F_B 3F1 (3B1;0B0)OVERLAP_F_B 3REDUCE_GRAD 0B1 0REDUCE_GRAD", 1,
               2);
    check_pass("0F0 0F1 0B0 0B1 0REDUCE_GRAD", "0F0 0F1 0B0 0B1 0REDUCE_GRAD", 1, 2);
    check_pass("0F0 0F1 0F2 0I0 0I1 0W0 0I2 0W2 0W1", "0F0 0F1 0F2 0I0 0I1 0W0 0B2 0W1", 2, 0);
    check_pass("0I0 _ 0W0 0I1 0W2", "0B0 0I1 0W2", 2, 0);
}

static void check_send_recv(const char *const *compute, const char *const *expected, const int *map,
                            int n_stages, int expected_steps, const char *what) {
    PcSchedule c = sched_from_rows(compute, 2), out;
    PcStatus st = pc_sched_add_send_recv(&c, map, n_stages, &out);
    CHECK(st == PC_OK, "%s: %s", what, pc_last_error());
    if (st == PC_OK) {
        check_sched(&out, expected, 2, what);
        int32_t steps = 0;
        CHECK(pc_sched_simulate_steps(&out, map, n_stages, &steps, NULL) == PC_OK, "%s steps: %s", what,
              pc_last_error());
        CHECK(steps == expected_steps, "%s: %d simulated steps, expected %d", what, (int)steps,
              expected_steps);
        pc_schedule_free(&out);
    }
    pc_schedule_free(&c);
}

static void test_send_recv(void) {
    const char *c1[] = {"0F0 0F1 _ 0B0 _ 0B1", "_ 1F0 1B0 1F1 1B1 _"};
    const char *e1[] = {"0F0 0SEND_F0 0F1 0SEND_F1 0RECV_B0 0B0 0RECV_B1 0B1",
                        "1RECV_F0 1RECV_F1 1F0 1B0 1SEND_B0 1F1 1B1 1SEND_B1"};
    int m1[2] = {0, 1};
    check_send_recv(c1, e1, m1, 2, 11, "simple_2_rank_2_stage");
    const char *c2[] = {"0F0 0F1 _ 3F0 3B0 3F1 3B1 0B0 3W0 0B1 3W1 0W0 0W1",
                        "_ 1F0 2F0 1F1 2F1 2B0 1B0 2B1 1B1 2W0 2W1 1W0 1W1"};
    const char *e2[] = {"0F0 0SEND_F0 0F1 0SEND_F1 3RECV_F0 3F0 3B0 3SEND_B0 3RECV_F1 3F1 3B1 3SEND_B1 "
                        "0RECV_B0 0B0 3W0 0RECV_B1 0B1 3W1 0W0 0W1",
                        "1RECV_F0 1RECV_F1 1F0 2F0 2SEND_F0 1F1 2RECV_B0 2F1 2SEND_F1 2B0 2RECV_B1 1B0 "
                        "1SEND_B0 2B1 1B1 1SEND_B1 2W0 2W1 1W0 1W1"};
    int m2[4] = {0, 1, 1, 0};
    check_send_recv(c2, e2, m2, 4, 24, "v_2_rank_4_stage");

    /* a compute order that cannot be lowered: rank 1 needs a forward rank 0 never runs first */
    const char *bad[] = {"0B0 0F0", "1F0 1B0"};
    PcSchedule c = sched_from_rows(bad, 2), out;
    CHECK(pc_sched_add_send_recv(&c, m1, 2, &out) == PC_ERR_INVALID &&
              strstr(pc_last_error(), "Malformed compute schedule"),
          "malformed: %s", pc_last_error());
    pc_schedule_free(&c);
}

/* ---- constraints and mappings ---- */

static void expect_error(PcSchedKind k, int pp, int spr, int n, const char *needle) {
    PcSchedule s;
    PcStatus st = pc_sched_generate(k, pp, spr, n, 0, &s);
    CHECK(st == PC_ERR_INVALID && strstr(pc_last_error(), needle),
          "%s pp=%d spr=%d n=%d: expected error containing '%s', got status %d '%s'",
          pc_sched_kind_name(k), pp, spr, n, needle, (int)st, st ? pc_last_error() : "");
    if (st == PC_OK) pc_schedule_free(&s);
}

static void test_constraints(void) {
    expect_error(PC_SCHED_1F1B, 4, 0, 3,
                 "Number of microbatches (3) must be greater than or equal to the number of stages (4).");
    expect_error(PC_SCHED_INTERLEAVED_1F1B, 4, 2, 9, "multiple of the number of rounds (2), but got 9.");
    expect_error(PC_SCHED_INTERLEAVED_ZB, 4, 2, 14, "Zero bubble requires");
    expect_error(PC_SCHED_ZBV, 2, 3, 4, "ZBV requires exactly 2 stages per rank, but got 3.");
    expect_error(PC_SCHED_DUALPIPEV, 2, 3, 8, "ZBV requires exactly 2 stages per rank");
    expect_error(PC_SCHED_DUALPIPEV, 4, 2, 6,
                 "DualPipeV requires at least as many microbatches as stages, but got 6 microbatches and 8 stages.");
    expect_error(PC_SCHED_GPIPE, 2, 2, 4, "single-stage");
    expect_error(PC_SCHED_GPIPE, 0, 0, 4, "pp");
    expect_error(PC_SCHED_GPIPE, 2, 0, 0, "n_microbatches");
    PcSchedKind k;
    CHECK(pc_sched_kind_from_name("interleaved1f1b", &k) == PC_OK && k == PC_SCHED_INTERLEAVED_1F1B, "nocase");
    CHECK(pc_sched_kind_from_name("ZBVZEROBUBBLE", &k) == PC_OK && k == PC_SCHED_ZBV, "nocase 2");
    CHECK(pc_sched_kind_from_name("ScheduleThatDoesNotExist", &k) == PC_ERR_INVALID &&
              strstr(pc_last_error(), "ScheduleThatDoesNotExist") && strstr(pc_last_error(), "DualPipeV"),
          "unknown name: %s", pc_last_error());
    /* relaxed rounds: pp=4 accepts n=3, 6, 10 */
    int ok_n[] = {3, 6, 10};
    for (int i = 0; i < 3; i++) CHECK(pc_sched_check(PC_SCHED_INTERLEAVED_1F1B, 4, 2, ok_n[i]) == PC_OK, "n=%d", ok_n[i]);

    int v24[] = {0, 1, 1, 0}, v412[] = {0, 1, 2, 3, 3, 2, 1, 0, 0, 1, 2, 3};
    for (int s = 0; s < 4; s++) CHECK(pc_sched_stage_to_rank(PC_STAGE_V, 2, 4, s) == v24[s], "v(2,4) %d", s);
    for (int s = 0; s < 12; s++) CHECK(pc_sched_stage_to_rank(PC_STAGE_V, 4, 12, s) == v412[s], "v(4,12) %d", s);
    CHECK(pc_sched_stage_to_rank(PC_STAGE_V, 4, 16, 15) == 0, "v(4,16) 15");
    CHECK(pc_sched_stage_to_rank(PC_STAGE_LOOP, 4, 8, 5) == 1, "loop");

    /* per-rank generation equals the all-rank one */
    PcSchedule all;
    CHECK(pc_sched_generate(PC_SCHED_INTERLEAVED_ZB, 3, 2, 6, 0, &all) == PC_OK, "zb 3x6");
    for (int r = 0; r < 3; r++) {
        PcActionList one;
        CHECK(pc_sched_generate_rank(PC_SCHED_INTERLEAVED_ZB, 3, 2, 6, r, 0, &one) == PC_OK, "rank gen");
        char *a = row_str(&one), *b = row_str(&all.ranks[r]);
        CHECK(strcmp(a, b) == 0, "rank %d differs", r);
        free(a);
        free(b);
        pc_action_list_free(&one);
    }
    pc_schedule_free(&all);
}

/* ---- properties over the golden grid ---- */

static int count_type_before(const PcActionList *l, PcActType t, PcActType until) {
    int c = 0;
    for (int i = 0; i < l->len; i++) {
        if (l->items[i].type == until) break;
        c += l->items[i].type == t;
    }
    return c;
}

static void test_properties(void) {
    int pps[] = {2, 3, 4}, ns[] = {1, 2, 3, 4, 6, 8, 12};
    for (int k = 0; k < PC_SCHED_KIND_COUNT; k++) {
        for (int a = 0; a < 3; a++) {
            for (int b = 0; b < 7; b++) {
                int pp = pps[a], n = ns[b];
                if (pc_sched_check((PcSchedKind)k, pp, 0, n) != PC_OK) continue;
                PcSchedule s;
                unsigned flags = PC_SCHED_FIX_1F1B_NUMBERING;
                CHECK(pc_sched_generate((PcSchedKind)k, pp, 0, n, flags, &s) == PC_OK, "gen");
                int spr = pc_sched_default_stages_per_rank((PcSchedKind)k);
                int map[16];
                PcStatus st = pc_sched_validate(&s, pp, pp * spr, n, map);
                CHECK(st == PC_OK, "%s pp=%d n=%d does not validate: %s", pc_sched_kind_name(k), pp, n,
                      pc_last_error());
                for (int stg = 0; stg < pp * spr && st == PC_OK; stg++) {
                    int want = pc_sched_stage_to_rank(pc_sched_kind_style((PcSchedKind)k), pp, pp * spr, stg);
                    CHECK(map[stg] == want, "%s pp=%d: stage %d on rank %d, expected %d",
                          pc_sched_kind_name(k), pp, stg, map[stg], want);
                }
                if (k == PC_SCHED_GPIPE || k == PC_SCHED_1F1B) {
                    for (int r = 0; r < pp; r++) {
                        int fb = count_type_before(&s.ranks[r], PC_ACT_F, PC_ACT_B);
                        int want = k == PC_SCHED_GPIPE ? n : pp - r; /* warm-up pp-1-r, then 1F1B */
                        CHECK(fb == want, "%s pp=%d n=%d rank %d: %d forwards before first B, expected %d",
                              pc_sched_kind_name(k), pp, n, r, fb, want);
                    }
                }
                PcSchedule lowered;
                st = pc_sched_lower(&s, n, NULL, 0, PC_LOWER_TORCH, &lowered);
                CHECK(st == PC_OK, "%s pp=%d n=%d lower: %s", pc_sched_kind_name(k), pp, n, pc_last_error());
                if (st == PC_OK) {
                    PcSimResult res;
                    st = pc_sched_simulate(&lowered, NULL, 0, NULL, &res);
                    CHECK(st == PC_OK, "%s pp=%d n=%d simulate: %s", pc_sched_kind_name(k), pp, n,
                          pc_last_error());
                    if (st == PC_OK) {
                        CHECK(res.makespan > 0 && res.steps > 0, "sim result");
                        for (int r = 0; r < pp; r++)
                            CHECK(res.ranks[r].bubble_fraction >= -1e-9 && res.ranks[r].bubble_fraction < 1,
                                  "bubble range");
                        pc_sim_result_free(&res);
                    }
                    pc_schedule_free(&lowered);
                }
                pc_schedule_free(&s);
            }
        }
    }
}

/* ---- validator ---- */

static void test_validate(void) {
    const char *ok1[] = {"0F0 0B0", "1F0 1B0"};
    const char *ok2[] = {"0F0 0I0 0W0", "1F0 1I0 1W0"};
    PcSchedule s = sched_from_rows(ok1, 2);
    CHECK(pc_sched_validate(&s, 2, 2, 1, NULL) == PC_OK, "valid F/B: %s", pc_last_error());
    pc_schedule_free(&s);
    s = sched_from_rows(ok2, 2);
    CHECK(pc_sched_validate(&s, 2, 2, 1, NULL) == PC_OK, "valid F/I/W: %s", pc_last_error());
    pc_schedule_free(&s);
    const char *one[] = {"0F0 0B0"};
    s = sched_from_rows(one, 1);
    CHECK(pc_sched_validate(&s, 2, 2, 1, NULL) == PC_ERR_INVALID && strstr(pc_last_error(), "incorrect number of ranks"),
          "missing rank");
    pc_schedule_free(&s);
    const char *nob[] = {"0F0", "1F0"};
    s = sched_from_rows(nob, 2);
    CHECK(pc_sched_validate(&s, 2, 2, 1, NULL) == PC_ERR_INVALID && strstr(pc_last_error(), "total backwards"),
          "missing backward: %s", pc_last_error());
    pc_schedule_free(&s);
    const char *bf[] = {"0F0 0F1 0B1 0B0", "_ 1B0 1F0 1F1 1B1"};
    s = sched_from_rows(bf, 2);
    CHECK(pc_sched_validate(&s, 2, 2, 2, NULL) == PC_ERR_INVALID &&
              strstr(pc_last_error(), "Rank 1, step 1: Running Full Backward for stage 1, microbatch 0 without first running Forward") &&
              strstr(pc_last_error(), "Step 1: 0F1") && strstr(pc_last_error(), "<-- ERROR HERE"),
          "B before F: %s", pc_last_error());
    pc_schedule_free(&s);
    const char *wi[] = {"0F0 0W0 0I0", "1F0 1B0"};
    s = sched_from_rows(wi, 2);
    CHECK(pc_sched_validate(&s, 2, 2, 1, NULL) == PC_ERR_INVALID &&
              strstr(pc_last_error(), "without first running Backward Input"),
          "W before I: %s", pc_last_error());
    pc_schedule_free(&s);
    const char *two[] = {"0F0 1F0 1B0 0B0", "1F0 1B0"};
    s = sched_from_rows(two, 2);
    CHECK(pc_sched_validate(&s, 2, 2, 1, NULL) == PC_ERR_INVALID &&
              strstr(pc_last_error(), "Stage 1 is assigned to both rank 1 and rank 0"),
          "stage on two ranks: %s", pc_last_error());
    pc_schedule_free(&s);
    const char *dup[] = {"0F0 0F0 0B0", "1F0 1B0"};
    s = sched_from_rows(dup, 2);
    CHECK(pc_sched_validate(&s, 2, 2, 1, NULL) == PC_ERR_INVALID && strstr(pc_last_error(), "more than once"),
          "duplicate F: %s", pc_last_error());
    pc_schedule_free(&s);
    /* torch's quirky 1F1B order (last rank numbers forwards from 1) does not validate */
    PcSchedule q;
    CHECK(pc_sched_generate(PC_SCHED_1F1B, 2, 0, 4, 0, &q) == PC_OK, "1f1b");
    CHECK(pc_sched_validate(&q, 2, 2, 4, NULL) == PC_ERR_INVALID, "quirky 1F1B should not validate");
    pc_schedule_free(&q);

    /* a long schedule: the grid is windowed around the failing step */
    PcSchedule big;
    pc_schedule_init(&big, 4);
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 300; i++) pc_action_list_push(&big.ranks[r], pc_action_make(r, PC_ACT_F, i));
    pc_action_list_push(&big.ranks[2], pc_action_make(2, PC_ACT_W, 7));
    CHECK(pc_sched_validate(&big, 4, 4, 300, NULL) == PC_ERR_INVALID &&
              strstr(pc_last_error(), "Step 300: ") && strstr(pc_last_error(), "earlier steps") &&
              strstr(pc_last_error(), "<-- ERROR HERE"),
          "windowed grid: %s", pc_last_error());
    pc_schedule_free(&big);
}

/* ---- simulator ---- */

static void test_simulate(void) {
    PcSchedule g, l;
    PcSimResult res;
    /* GPipe 2x4 with F=1, B=2: makespan 15, bubble (p-1)/(m+p-1) = 0.2, all 4 mb in flight */
    pc_sched_generate(PC_SCHED_GPIPE, 2, 0, 4, 0, &g);
    CHECK(pc_sched_lower(&g, 4, NULL, 0, PC_LOWER_COMMS, &l) == PC_OK, "lower gpipe");
    CHECK(pc_sched_simulate(&l, NULL, 0, NULL, &res) == PC_OK, "sim gpipe: %s", pc_last_error());
    CHECK(fabs(res.makespan - 15.0) < 1e-9, "gpipe makespan %g", res.makespan);
    CHECK(fabs(res.ranks[0].bubble_fraction - 0.2) < 1e-9 && fabs(res.ranks[1].bubble_fraction - 0.2) < 1e-9,
          "gpipe bubble %g %g", res.ranks[0].bubble_fraction, res.ranks[1].bubble_fraction);
    CHECK(res.ranks[0].peak_inflight == 4 && res.ranks[1].peak_inflight == 4, "gpipe peak");
    pc_sim_result_free(&res);
    /* comm latency 0.5 delays every hop */
    PcSimCosts c = pc_sim_costs_default();
    c.comm = 0.5;
    CHECK(pc_sched_simulate(&l, NULL, 0, &c, &res) == PC_OK, "sim gpipe comm");
    CHECK(fabs(res.makespan - 16.0) < 1e-9, "gpipe makespan with comm %g", res.makespan);
    pc_sim_result_free(&res);
    pc_schedule_free(&g);
    pc_schedule_free(&l);

    /* 1F1B 4x8 (runnable numbering): rank r holds at most pp - r microbatches */
    pc_sched_generate(PC_SCHED_1F1B, 4, 0, 8, PC_SCHED_FIX_1F1B_NUMBERING, &g);
    pc_sched_lower(&g, 8, NULL, 0, PC_LOWER_COMMS | PC_LOWER_REDUCE_GRAD, &l);
    CHECK(pc_sched_simulate(&l, NULL, 0, NULL, &res) == PC_OK, "sim 1f1b: %s", pc_last_error());
    for (int r = 0; r < 4; r++)
        CHECK(res.ranks[r].peak_inflight == 4 - r, "1f1b rank %d peak %d", r, (int)res.ranks[r].peak_inflight);
    /* same bubble as GPipe: (p-1)/(m+p-1) = 3/11 */
    CHECK(fabs(res.makespan - 33.0) < 1e-9, "1f1b makespan %g", res.makespan);
    pc_sim_result_free(&res);
    pc_schedule_free(&g);
    pc_schedule_free(&l);

    /* with blocking receives, each rank waiting to receive before it sends deadlocks */
    const char *dl[] = {"0RECV_B0 0F0 0SEND_F0 0B0", "1RECV_F0 1F0 1B0 1SEND_B0"};
    PcSchedule d = sched_from_rows(dl, 2);
    CHECK(pc_sched_simulate(&d, NULL, 0, NULL, &res) == PC_OK, "posted receives do not block: %s",
          pc_last_error());
    pc_sim_result_free(&res);
    c = pc_sim_costs_default();
    c.blocking_recv = 1;
    PcStatus st = pc_sched_simulate(&d, NULL, 0, &c, &res);
    CHECK(st == PC_ERR_INVALID && strstr(pc_last_error(), "deadlock") &&
              strstr(pc_last_error(), "0RECV_B0") && strstr(pc_last_error(), "1SEND_B0") &&
              strstr(pc_last_error(), "1RECV_F0"),
          "deadlock message: %s", pc_last_error());
    int32_t steps;
    CHECK(pc_sched_simulate_steps(&d, NULL, 0, &steps, NULL) == PC_ERR_INVALID &&
              strstr(pc_last_error(), "not progressing"),
          "steps deadlock: %s", pc_last_error());
    pc_schedule_free(&d);
    /* a backward placed before its forward blocks its rank for good, and the peer with it */
    const char *dl2[] = {"0B0 0F0 0SEND_F0", "1RECV_F0 1F0 1B0"};
    d = sched_from_rows(dl2, 2);
    st = pc_sched_simulate(&d, NULL, 0, NULL, &res);
    CHECK(st == PC_ERR_INVALID && strstr(pc_last_error(), "rank 0 blocked at step 0 on 0B0 (waits for 0F0") &&
              strstr(pc_last_error(), "rank 1 blocked at step 1 on 1F0 (waits for 0SEND_F0 on rank 0)"),
          "deadlock message 2: %s", pc_last_error());
    pc_schedule_free(&d);
}

int main(void) {
    test_action_text();
    test_csv();
    test_generators_examples();
    test_zb1p_lowering();
    test_passes();
    test_send_recv();
    test_constraints();
    test_properties();
    test_validate();
    test_simulate();
    printf("test_sched: %d checks, %d failures\n", g_checks, g_failures);
    return g_failures ? 1 : 0;
}

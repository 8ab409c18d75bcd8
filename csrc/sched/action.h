/* action.h — the schedule IR: actions, per-rank action lists, text and CSV forms.
 *
 * An action is one step of one rank: `<stage><TYPE><microbatch>` in text, exactly as
 * torch.distributed.pipelining prints it (`0F1`, `2SEND_B3`, `1UNSHARD`, `0REDUCE_GRAD`).
 * OVERLAP_F_B is a container of sub-actions printed `(0F3;3B1)OVERLAP_F_B`; the container's
 * own stage is -1 and its microbatch is absent. An idle slot (torch's `None`) is an action
 * of type PC_ACT_IDLE; its text form is the empty string.
 *
 * Invariants:
 *   - mb == -1 means "no microbatch" (UNSHARD, RESHARD, REDUCE_GRAD, containers, idle).
 *   - a container has 1..PC_ACTION_MAX_SUB sub-actions, none of which is a container or idle;
 *     every non-container has n_sub == 0.
 *   - a PcSchedule owns its rank lists; rank r's list is ranks[r].
 *
 * Exports: PcActType, PcAction, PcActionList, PcSchedule and their helpers; pc_action_parse /
 * pc_action_format (round trip); CSV text and file load/dump (one row per rank, one cell per
 * action, empty cell = idle; dump writes "\r\n" line ends like Python's csv.writer).
 */
#ifndef PC_SCHED_ACTION_H
#define PC_SCHED_ACTION_H

#include <stddef.h>
#include <stdint.h>

#include "../core/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum PcActType {
    PC_ACT_IDLE = 0,      /* torch's None: an idle slot */
    PC_ACT_F,             /* forward */
    PC_ACT_I,             /* backward, input gradients only */
    PC_ACT_W,             /* backward, weight gradients only */
    PC_ACT_B,             /* full backward */
    PC_ACT_SEND_F,
    PC_ACT_RECV_F,
    PC_ACT_SEND_B,
    PC_ACT_RECV_B,
    PC_ACT_REDUCE_GRAD,
    PC_ACT_OVERLAP_F_B,   /* container of sub-actions */
    PC_ACT_UNSHARD,
    PC_ACT_RESHARD,
    PC_ACT_COUNT
} PcActType;

#define PC_ACTION_MAX_SUB 4
/* Longest text of one action: a container of PC_ACTION_MAX_SUB leaves with 10-digit ids. */
#define PC_ACTION_TEXT_MAX 160

typedef struct PcActionSub {
    int32_t stage;
    int32_t mb;           /* -1 when none */
    PcActType type;       /* never IDLE or OVERLAP_F_B */
} PcActionSub;

typedef struct PcAction {
    int32_t stage;        /* -1 for containers */
    int32_t mb;           /* -1 when none */
    PcActType type;
    int32_t n_sub;        /* > 0 only for containers */
    PcActionSub sub[PC_ACTION_MAX_SUB];
} PcAction;

typedef struct PcActionList {
    PcAction *items;      /* owned, capacity `cap` */
    int32_t len;
    int32_t cap;
} PcActionList;

typedef struct PcSchedule {
    int32_t n_ranks;
    PcActionList *ranks;  /* owned array of n_ranks lists */
} PcSchedule;

/* ---- action types ---- */

/* Torch's short name of a type ("F", "SEND_B", "OVERLAP_F_B"; "" for IDLE). Static string. */
const char *pc_act_type_name(PcActType t);
/* Type whose name is exactly s[0..len) ; returns 0 and sets *out, or -1 when unknown. */
int pc_act_type_from_name(const char *s, size_t len, PcActType *out);
/* 1 for F, I, W, B and OVERLAP_F_B (torch's is_compute_op). */
int pc_act_type_is_compute(PcActType t);
/* 1 for SEND_F, RECV_F, SEND_B, RECV_B. */
int pc_act_type_is_comm(PcActType t);

/* ---- actions ---- */

PcAction pc_action_make(int32_t stage, PcActType type, int32_t mb);
PcAction pc_action_idle(void);
static inline int pc_action_is_idle(const PcAction *a) { return a->type == PC_ACT_IDLE; }
/* Container of two sub-actions (DualPipeV's overlapped forward + backward). */
PcAction pc_action_overlap(PcActionSub fwd, PcActionSub bwd);
/* 1 when a and b are the same action (sub-actions included). */
int pc_action_equal(const PcAction *a, const PcAction *b);
/* View a leaf action as a sub-action, and back. */
PcActionSub pc_action_as_sub(const PcAction *a);
PcAction pc_action_from_sub(PcActionSub s);
/* The leaves of a: its sub-actions for a container, else a itself. Returns the count. */
int pc_action_leaves(const PcAction *a, PcActionSub out[PC_ACTION_MAX_SUB]);

/* Text form into buf (NUL-terminated, truncated to cap). Returns the full length. Idle -> "". */
int pc_action_format(const PcAction *a, char *buf, size_t cap);
/* Parse text (surrounding whitespace ignored). Empty/blank -> an idle action. Unknown text ->
 * PC_ERR_RUNTIME "Invalid action string: ...". Trailing characters after a valid action are
 * rejected (torch's prefix match accepts them). */
PcStatus pc_action_parse(const char *text, PcAction *out);
/* Same on s[0..len) (not NUL-terminated). */
PcStatus pc_action_parse_n(const char *s, size_t len, PcAction *out);

/* ---- lists and schedules ---- */

void pc_action_list_init(PcActionList *l);
void pc_action_list_free(PcActionList *l);
PcStatus pc_action_list_push(PcActionList *l, PcAction a);
PcStatus pc_action_list_copy(const PcActionList *src, PcActionList *dst);

/* Allocates n_ranks empty lists. On failure s is left empty (n_ranks 0). */
PcStatus pc_schedule_init(PcSchedule *s, int32_t n_ranks);
void pc_schedule_free(PcSchedule *s);
PcStatus pc_schedule_copy(const PcSchedule *src, PcSchedule *dst);
/* Largest stage index used by any action (sub-actions included), or -1. */
int32_t pc_schedule_max_stage(const PcSchedule *s);
/* Longest rank list. */
int32_t pc_schedule_max_len(const PcSchedule *s);

/* ---- CSV ---- */

/* Parse CSV text: row r is rank r; cells are action strings (double-quoted cells allowed);
 * empty cell = idle. Lines end in "\n" or "\r\n"; a final empty line is not a rank. */
PcStatus pc_schedule_from_csv(const char *text, size_t len, PcSchedule *out);
/* CSV text (malloc'd, NUL-terminated, caller frees) with "\r\n" line ends. */
PcStatus pc_schedule_to_csv(const PcSchedule *s, char **out, size_t *out_len);
PcStatus pc_schedule_load_csv(const char *path, PcSchedule *out);
PcStatus pc_schedule_dump_csv(const char *path, const PcSchedule *s);

#ifdef __cplusplus
}
#endif
#endif /* PC_SCHED_ACTION_H */

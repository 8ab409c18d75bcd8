/* validate.h — schedule validator and the step x rank text grid.
 *
 * pc_sched_validate applies torch's _validate_schedule rules, slightly stricter:
 *   - exactly pp ranks; every stage in [0, n_stages) and on one rank only;
 *   - F, I, W, B carry a microbatch in [0, n) and none of them repeats for a (stage, mb);
 *   - I and B of a microbatch come after its F on that stage; W after its I;
 *   - per stage: n forwards, #I == #W, #B + (#I + #W) / 2 == n.
 * Sub-actions of OVERLAP_F_B are checked as if they were in the container's slot; comm,
 * UNSHARD/RESHARD and REDUCE_GRAD actions only take part in the stage -> rank check.
 * On failure: PC_ERR_INVALID whose message names rank, step, stage and microbatch and, for
 * ordering errors, shows the grid (steps x ranks) around the failing step marked
 * "<-- ERROR HERE" (the grid is cut to a window so the message stays readable).
 *
 * Exports: pc_sched_validate, pc_sched_format_grid.
 */
#ifndef PC_SCHED_VALIDATE_H
#define PC_SCHED_VALIDATE_H

#include "action.h"

#ifdef __cplusplus
extern "C" {
#endif

/* stage_to_rank_out (n_stages entries, may be NULL) receives the inferred mapping.
 * n_stages <= 0 means max stage + 1. */
PcStatus pc_sched_validate(const PcSchedule *s, int pp, int n_stages, int n_microbatches,
                           int *stage_to_rank_out);

/* Text grid: a header of rank labels, then one row "Step NN: a b c" per step; err_step >= 0
 * marks that row. Rows [first, last] only (last < 0: to the end), with "..." lines where
 * rows were left out. *out is malloc'd (caller frees). */
PcStatus pc_sched_format_grid(const PcSchedule *s, int err_step, int first, int last, char **out);

#ifdef __cplusplus
}
#endif
#endif /* PC_SCHED_VALIDATE_H */

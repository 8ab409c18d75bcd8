/* generators.h — compute-only action orders of the seven pipeline schedules.
 *
 * Each generator is a pure function of (pp ranks, stages per rank, n_microbatches) that
 * produces, for every rank, the action order torch.distributed.pipelining (2.11) reports as
 * `pipeline_order` (what `_schedule_visualizer.get_schedule_ops` returns), idle slots included
 * where torch has them:
 *   GPipe, 1F1B (one stage per rank, stage r on rank r): torch passes these orders through its
 *     reduce-grad pass, so idle slots are dropped and `<r>REDUCE_GRAD` follows the last B.
 *   Interleaved1F1B, LoopedBFS, InterleavedZeroBubble: loop placement, stage s on rank s % pp.
 *   ZBVZeroBubble, DualPipeV: exactly two stages per rank, V placement (rank r holds stages r
 *     and 2*pp-1-r).
 * Constraint violations fail with PC_ERR_INVALID and torch's message.
 *
 * Flags: PC_SCHED_FIX_1F1B_NUMBERING — torch's informational 1F1B order numbers the last
 * rank's forwards 1..n (microbatch 0 missing, n out of range; its runtime executes 0..n-1).
 * The default reproduces torch's text; with this flag the last rank runs F0..F(n-1), which is
 * the order that validates and can be lowered and executed.
 *
 * Exports: PcSchedKind, name lookup, constraint check, stage<->rank mappings, generators.
 */
#ifndef PC_SCHED_GENERATORS_H
#define PC_SCHED_GENERATORS_H

#include "action.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum PcSchedKind {
    PC_SCHED_GPIPE = 0,
    PC_SCHED_1F1B,
    PC_SCHED_INTERLEAVED_1F1B,
    PC_SCHED_LOOPED_BFS,
    PC_SCHED_INTERLEAVED_ZB,
    PC_SCHED_ZBV,
    PC_SCHED_DUALPIPEV,
    PC_SCHED_KIND_COUNT
} PcSchedKind;

typedef enum PcStageStyle { PC_STAGE_LOOP = 0, PC_STAGE_V = 1 } PcStageStyle;

#define PC_SCHED_FIX_1F1B_NUMBERING 1u

/* Torch's name ("GPipe", "1F1B", "Interleaved1F1B", "LoopedBFS", "InterleavedZeroBubble",
 * "ZBVZeroBubble", "DualPipeV"). */
const char *pc_sched_kind_name(PcSchedKind k);
/* Case-insensitive lookup; PC_ERR_INVALID listing the valid names when unknown. */
PcStatus pc_sched_kind_from_name(const char *name, PcSchedKind *out);
/* 1 for schedules with several stages per rank (torch's PipelineScheduleMulti). */
int pc_sched_kind_is_multi(PcSchedKind k);
/* Stages per rank used when the caller passes 0: 1 for single-stage schedules, else 2. */
int pc_sched_default_stages_per_rank(PcSchedKind k);
PcStageStyle pc_sched_kind_style(PcSchedKind k);

/* Checks the arguments the way torch's constructors do (PC_ERR_INVALID with torch's text). */
PcStatus pc_sched_check(PcSchedKind k, int pp, int stages_per_rank, int n_microbatches);

/* Rank of `stage` for n_stages stages over pp ranks: loop = stage % pp; V walks ranks
 * 0..pp-1, pp-1..0, 0..pp-1, ... Returns -1 for out-of-range arguments. */
int pc_sched_stage_to_rank(PcStageStyle style, int pp, int n_stages, int stage);

/* All ranks' compute-only orders into *out (initialised here; caller frees).
 * stages_per_rank 0 = default. */
PcStatus pc_sched_generate(PcSchedKind k, int pp, int stages_per_rank, int n_microbatches,
                           unsigned flags, PcSchedule *out);
/* One rank's order into *out (initialised here; caller frees). */
PcStatus pc_sched_generate_rank(PcSchedKind k, int pp, int stages_per_rank, int n_microbatches,
                                int rank, unsigned flags, PcActionList *out);

#ifdef __cplusplus
}
#endif
#endif /* PC_SCHED_GENERATORS_H */

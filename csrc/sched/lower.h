/* lower.h — lowering passes from compute-only orders to executable ones (torch's passes).
 *
 *   add_unshard_reshard  per rank: before each compute action, keep the next
 *                        `max_active` distinct stages unsharded (UNSHARD the missing ones in
 *                        order of first use, RESHARD the others first, ascending), and RESHARD
 *                        every still-active stage at the end. Idle slots are dropped.
 *   add_reduce_grad      per rank: idle slots dropped; `<s>REDUCE_GRAD` right after the
 *                        n-th W-or-B of stage s (sub-actions of OVERLAP_F_B counted).
 *   merge_bw             per rank: idle slots dropped; an I directly followed by the W of the
 *                        same stage and microbatch becomes one B.
 *   add_send_recv        all ranks: round-robin over ranks in order; a rank's head action goes
 *                        in when its input is on that rank (F of stage>0: RECV_F or the local
 *                        F of stage-1; I/B of a non-last stage: RECV_B or the local I/B of
 *                        stage+1). When an F whose next stage lives on another rank goes in,
 *                        SEND_F follows it and the receiver's list gets RECV_F; likewise I/B
 *                        with SEND_B/RECV_B toward stage-1. A full sweep without progress fails
 *                        ("Malformed compute schedule"). Nothing between stages of one rank.
 *   lower                the composition torch's runtime applies (unshard/reshard, reduce-grad,
 *                        send/recv), each pass selectable by flag, with optional merge_bw first.
 *
 * All functions fill a fresh output (initialised here; caller frees) and never modify input.
 */
#ifndef PC_SCHED_LOWER_H
#define PC_SCHED_LOWER_H

#include "action.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PC_LOWER_MERGE_BW       1u
#define PC_LOWER_UNSHARD        2u
#define PC_LOWER_REDUCE_GRAD    4u
#define PC_LOWER_COMMS          8u
/* What torch's _PipelineScheduleRuntime does to a compute-only schedule. */
#define PC_LOWER_TORCH (PC_LOWER_UNSHARD | PC_LOWER_REDUCE_GRAD | PC_LOWER_COMMS)

PcStatus pc_sched_add_unshard_reshard(const PcActionList *in, int max_active, PcActionList *out);
PcStatus pc_sched_add_reduce_grad(const PcActionList *in, int n_microbatches, PcActionList *out);
PcStatus pc_sched_merge_bw(const PcActionList *in, PcActionList *out);
/* stage_to_rank has n_stages entries. */
PcStatus pc_sched_add_send_recv(const PcSchedule *in, const int *stage_to_rank, int n_stages,
                                PcSchedule *out);

/* Full lowering. stage_to_rank may be NULL: then it is inferred from where each stage's
 * actions sit (every stage must appear on exactly one rank); n_stages <= 0 means
 * max stage + 1. REDUCE_GRAD actions already present in the input are kept and not added
 * twice for their stage. */
PcStatus pc_sched_lower(const PcSchedule *compute, int n_microbatches, const int *stage_to_rank,
                        int n_stages, unsigned flags, PcSchedule *out);

/* Stage -> rank map read off a schedule (n_stages entries, -1 for stages never seen).
 * PC_ERR_INVALID when a stage appears on two ranks or outside [0, n_stages). */
PcStatus pc_sched_infer_stage_to_rank(const PcSchedule *s, int n_stages, int *stage_to_rank);

#ifdef __cplusplus
}
#endif
#endif /* PC_SCHED_LOWER_H */

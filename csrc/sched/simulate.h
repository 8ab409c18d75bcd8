/* simulate.h — dry runs of a lowered schedule.
 *
 * pc_sched_simulate: each rank runs its list in order; an action starts when the rank is free
 * and its inputs exist, and lasts its cost:
 *   F of stage s > 0       needs F(s-1) on the same rank, or this rank's RECV_F(s)
 *   I/B of stage s         needs F(s); for s < last: I/B(s+1) on the same rank, or RECV_B(s)
 *   W                      needs I of the same stage and microbatch
 *   SEND_F / SEND_B        needs the F / (I or B) it sends; the data lands `comm` later
 *   RECV_F(s) / RECV_B(s)  posts a receive (torch's irecv) and does not wait; the F / I / B
 *                          that consumes it waits until the peer's SEND_F(s-1) / SEND_B(s+1)
 *                          data lands. With `blocking_recv` the RECV itself waits for the data
 *                          (a rank stalls at a RECV placed early, as with blocking p2p).
 *   OVERLAP_F_B            its sub-actions in order (cost `overlap` if >= 0, else their sum)
 *   others                 no inputs
 * Idle slots take no time. A state where no rank can move is a deadlock: PC_ERR_INVALID
 * naming each blocked action and what it waits for.
 * Reported: makespan, per rank busy compute time, finish time, bubble fraction
 * (1 - busy/makespan), peak in-flight activations (microbatches whose F ran on the rank and
 * whose B, or W when split, has not), start/end of every action, and `steps`: the length of
 * torch's unit-time lock-step simulation (_simulate_comms_compute) of the same schedule
 * (-1 when that simulation, whose receives block, does not progress).
 *
 * pc_sched_simulate_steps: that lock-step simulation alone (torch's rules, including its
 * second "fill the gap" pass), optionally returning the spaced timeline.
 */
#ifndef PC_SCHED_SIMULATE_H
#define PC_SCHED_SIMULATE_H

#include "action.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct PcSimCosts {
    double f, i, w, b;            /* compute, per microbatch and stage */
    double send, recv;            /* time a send / recv occupies its rank */
    double comm;                  /* latency from a send's end to the data landing */
    double overlap;               /* OVERLAP_F_B duration; < 0: sum of its sub-actions */
    double reduce_grad, unshard, reshard;
    int blocking_recv;            /* 0: RECV posts and returns; 1: RECV waits for the data */
} PcSimCosts;

/* F=I=W=1, B=2, overlap = sum, everything else 0 (torch's visualiser widths), non-blocking
 * receives. */
PcSimCosts pc_sim_costs_default(void);

typedef struct PcSimRank {
    double busy;                  /* compute time (F, I, W, B, OVERLAP_F_B) */
    double comm_busy;             /* time spent in SEND / RECV */
    double finish;                /* end of the rank's last action */
    double bubble_fraction;       /* 1 - busy / makespan */
    int32_t peak_inflight;        /* max microbatch activations held at once */
    int32_t n_actions;            /* non-idle actions */
    double *start, *end;          /* owned, one per list entry (idle: -1) */
    int32_t len;
} PcSimRank;

typedef struct PcSimResult {
    int32_t n_ranks;
    double makespan;
    int32_t steps;                /* torch lock-step length, -1 if it stalls */
    PcSimRank *ranks;             /* owned */
} PcSimResult;

void pc_sim_result_free(PcSimResult *r);

/* stage_to_rank may be NULL (inferred); n_stages <= 0 means max stage + 1.
 * *out is filled only on success. */
PcStatus pc_sched_simulate(const PcSchedule *s, const int *stage_to_rank, int n_stages,
                           const PcSimCosts *costs, PcSimResult *out);

/* *steps = number of lock steps; timeline (may be NULL) receives the spaced schedule. */
PcStatus pc_sched_simulate_steps(const PcSchedule *s, const int *stage_to_rank, int n_stages,
                                 int32_t *steps, PcSchedule *timeline);

#ifdef __cplusplus
}
#endif
#endif /* PC_SCHED_SIMULATE_H */

/* status.h — status codes and the thread-local error message.
 *
 * Every fallible function in csrc/ (outside csrc/py/) returns a PcStatus. On failure it
 * records a message with pc_set_error() (file, line, the failing call, the library's own
 * text) and returns the code; callers propagate with PC_TRY / PC_CHECK. csrc/py/ maps a
 * status to a Python exception in exactly one place (pc_py_raise in csrc/py/errors.c).
 * Nothing prints and continues, nothing calls exit().
 */
#ifndef PC_CORE_STATUS_H
#define PC_CORE_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum PcStatus {
    PC_OK = 0,
    PC_ERR_INVALID,      /* bad argument value or shape   -> ValueError   */
    PC_ERR_TYPE,         /* bad dtype / argument type     -> TypeError    */
    PC_ERR_INDEX,        /* index out of range            -> IndexError   */
    PC_ERR_OOM,          /* allocation failed             -> MemoryError  */
    PC_ERR_RUNTIME,      /* invalid state (freed graph)   -> RuntimeError */
    PC_ERR_DEVICE,       /* device mismatch / unavailable -> RuntimeError */
    PC_ERR_CUDA,         /* CUDA runtime / cuBLAS failure -> PipelineError */
    PC_ERR_NCCL,         /* NCCL failure                  -> PipelineError */
    PC_ERR_TIMEOUT,      /* a wait passed its deadline    -> PipelineError */
    PC_ERR_COMM,         /* transport failure             -> PipelineError */
    PC_ERR_PYTHON,       /* a Python callback raised; the Python error is already set */
    PC_ERR_NOTIMPL       /* not supported for this dtype/device -> NotImplementedError */
} PcStatus;

/* Record an error message (printf-style) for the calling thread and return `code`. */
PcStatus pc_set_error(PcStatus code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* The calling thread's last message ("" when none). Borrowed; valid until the next error. */
const char *pc_last_error(void);
void pc_clear_error(void);

/* Propagate a failing status. PC_TRY returns it; PC_TRY_GOTO jumps to `fail` with `st` set. */
#define PC_TRY(expr)                                   \
    do {                                               \
        PcStatus pc_try_st_ = (expr);                  \
        if (pc_try_st_ != PC_OK) return pc_try_st_;    \
    } while (0)

#define PC_TRY_GOTO(st, expr)                          \
    do {                                               \
        (st) = (expr);                                 \
        if ((st) != PC_OK) goto fail;                  \
    } while (0)

/* Grow a realloc'd array *arr of *cap items of `item` bytes to hold at least `need` (doubling,
 * 16 at first; new items zeroed). Out of memory: PC_ERR_OOM naming `what`, array unchanged. */
PcStatus pc_grow_array(void **arr, int *cap, int need, size_t item, const char *what);

/* Fail with a message when a user-visible condition does not hold. */
#define PC_CHECK(cond, code, ...)                                   \
    do {                                                            \
        if (!(cond)) return pc_set_error((code), __VA_ARGS__);      \
    } while (0)

#ifdef __cplusplus
}
#endif
#endif /* PC_CORE_STATUS_H */

/* blas.h — which CBLAS the CPU GEMM links against.
 *
 * With -DPC_BLAS_SCIPY the scipy-openblas32 wheel's cblas.h is used; it prefixes every symbol
 * with `scipy_` (scipy_cblas_sgemm). Otherwise a system <cblas.h> (OpenBLAS, netlib, BLIS)
 * with the plain names. PC_CBLAS(cblas_sgemm) names the right symbol in both cases. Integer
 * arguments are 32-bit in both builds (LP64 interface); callers check they fit in int.
 */
#ifndef PC_KERNELS_CPU_BLAS_H
#define PC_KERNELS_CPU_BLAS_H

#include <cblas.h>

#ifdef PC_BLAS_SCIPY
#define PC_CBLAS(name) scipy_##name
#else
#define PC_CBLAS(name) name
#endif

#endif /* PC_KERNELS_CPU_BLAS_H */

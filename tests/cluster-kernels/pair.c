/* Two kernels in one package: a sandboxed worker loads both before its sandbox is
 * applied, so the second one runs in the same (sandboxed) worker. */
#include <stdint.h>

void triple(uint64_t i, uint32_t *out) { out[i] = (uint32_t)(3 * i); }

void offset(uint64_t i, uint32_t base, uint32_t *out) { out[i] = base + (uint32_t)i; }

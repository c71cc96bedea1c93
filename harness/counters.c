/*
 * counters.c - the stand-in for counters_cupti.cc where the build has no CUPTI: every entry point
 * says so, and `tmbench run --counters` keeps timing (see counters.h).
 */
#include "common.h"
#include "counters.h"


tm_status tm_counters_start(tm_counters **out, tm_error_t *error) {
    *out = NULL;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "counters: this build has no CUPTI (configure with CUDA and CUPTI; timing only)");
}
tm_status tm_counters_begin_pass(tm_counters *c, tm_error_t *error) {
    (void)c;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "counters: this build has no CUPTI");
}
tm_status tm_counters_end_pass(tm_counters *c, tm_store *store, int64_t case_id, int *n_kernels, tm_error_t *error) {
    (void)c, (void)store, (void)case_id;
    *n_kernels = 0;
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "counters: this build has no CUPTI");
}
const char *tm_counters_missing(const tm_counters *c) {
    (void)c;
    return "";
}
void tm_counters_stop(tm_counters *c) { (void)c; }


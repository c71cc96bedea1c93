/*
 * counters_cupti.cc - hardware counters through the CUPTI Range Profiler (see counters.h). One
 * host object (cupti_profiler_host.h) holds the metric configuration for the device's chip; each
 * counter pass enables the range profiler on the current context in auto-range, kernel-replay
 * mode, decodes the counter data image afterwards and evaluates every range (= kernel).
 * C++ only because cupti_profiler_host.h includes <string>; the code is C otherwise, and the
 * interface (counters.h) is C. Built where CUPTI is found; counters.c stands in elsewhere.
 */
extern "C" {
#include "common.h"
#include "counters.h"
#include "kernels.h"
}

#include <cxxabi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cupti.h>
#include <cupti_profiler_host.h>
#include <cupti_profiler_target.h>
#include <cupti_range_profiler.h>
#include <cupti_target.h>
#include <dlfcn.h>
#include <sqlite3.h>


#define MAX_RANGES 4096 /* kernels per pass; more are counted as dropped */

/* The metrics asked for, with the short names stored in hardware_counters. */
static const struct {
    const char *metric, *key;
} wanted[] = {
    {"gpu__time_duration.sum", "gpu_time_ns"},
    {"dram__bytes_read.sum", "dram_bytes_read"},
    {"dram__bytes_write.sum", "dram_bytes_write"},
    {"smsp__sass_thread_inst_executed_op_ffma_pred_on.sum", "fp32_ffma"},
    {"smsp__sass_thread_inst_executed_op_fadd_pred_on.sum", "fp32_fadd"},
    {"smsp__sass_thread_inst_executed_op_fmul_pred_on.sum", "fp32_fmul"},
    {"smsp__sass_thread_inst_executed_op_hfma_pred_on.sum", "fp16_hfma"},
    {"smsp__sass_thread_inst_executed_op_hadd_pred_on.sum", "fp16_hadd"},
    {"smsp__sass_thread_inst_executed_op_hmul_pred_on.sum", "fp16_hmul"},
    /* tensor-core math ops: Ampere/Ada name them by source type; Hopper by instruction (mma.sync
     * = hmma, wgmma = hgmma) and lacks the fp16 ones of the first kind: sum one family, never both */
    {"sm__ops_path_tensor_src_fp16_dst_fp32.sum", "tensor_ops_fp16_fp32"},
    {"sm__ops_path_tensor_src_fp16_dst_fp16.sum", "tensor_ops_fp16_fp16"},
    {"sm__ops_path_tensor_src_bf16_dst_fp32.sum", "tensor_ops_bf16_fp32"},
    {"sm__ops_path_tensor_op_hmma_src_fp16.sum", "tensor_ops_hmma_fp16"},
    {"sm__ops_path_tensor_op_hmma_src_bf16_dst_fp32.sum", "tensor_ops_hmma_bf16"},
    {"sm__ops_path_tensor_op_hgmma_src_fp16.sum", "tensor_ops_hgmma_fp16"},
    {"sm__ops_path_tensor_op_hgmma_src_bf16_dst_fp32.sum", "tensor_ops_hgmma_bf16"},
    {"sm__throughput.avg.pct_of_peak_sustained_elapsed", "sm_throughput_pct"},
    {"sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_elapsed", "tensor_pipe_pct"},
};
#define N_WANTED (sizeof wanted / sizeof wanted[0])

struct tm_counters {
    CUpti_Profiler_Host_Object *host;
    const char *metrics[N_WANTED]; /* those the chip has */
    int keys[N_WANTED];            /* their index in wanted[] */
    size_t n_metrics, passes;
    bool instruction_tensor_metrics; /* the chip names tensor ops per instruction (Hopper) */
    uint8_t *config;
    size_t config_size;
    char missing[1024];
    CUpti_SubscriberHandle subscriber;
    /* the pass in progress: its range profiler and the names of the kernels launched, in order */
    char **names;
    size_t n_names, names_capacity;
    CUpti_RangeProfiler_Object *object;
    uint8_t *image;
    size_t image_size;
};

static tm_status cupti_failure(tm_error_t *error, const char *call, CUptiResult result) {
    const char *text = NULL;
    cuptiGetResultString(result, &text);
    if (result == CUPTI_ERROR_INSUFFICIENT_PRIVILEGES)
        return tm_error_set(error, TM_ERR_UNSUPPORTED,
                            "counters: the driver does not let this user read GPU performance counters (%s; see "
                            "https://developer.nvidia.com/ERR_NVGPUCTRPERM: run as root or set NVreg_RestrictProfilingToAdminUsers=0); "
                            "timing results are kept",
                            call);
    return tm_error_set(error, TM_ERR_UNSUPPORTED, "counters: %s failed: %s", call, text ? text : "?");
}

#define CHECK_CUPTI(call)                                                            \
    do {                                                                             \
        CUptiResult cupti_status_ = (call);                                          \
        if (cupti_status_ != CUPTI_SUCCESS) return cupti_failure(error, #call, cupti_status_); \
    } while (0)

static void CUPTIAPI on_callback(void *user, CUpti_CallbackDomain domain, CUpti_CallbackId id, const void *data);

extern "C" tm_status tm_counters_start(tm_counters **out, tm_error_t *error) {
    *out = NULL;
    char device[256];
    if (!tm_cuda_device_name(device, sizeof device))
        return tm_error_set(error, TM_ERR_UNSUPPORTED, "counters: no CUDA device is present (timing only)");
    tm_counters *c = (tm_counters *)calloc(1, sizeof *c);
    if (!c) return tm_error_set(error, TM_ERR_NO_MEMORY, "counters: out of memory");
    *out = c;
    CUpti_Profiler_Initialize_Params initialize = {CUpti_Profiler_Initialize_Params_STRUCT_SIZE, NULL};
    CHECK_CUPTI(cuptiProfilerInitialize(&initialize));
    CHECK_CUPTI(cuptiSubscribe(&c->subscriber, on_callback, c));
    CUpti_Device_GetChipName_Params chip = {CUpti_Device_GetChipName_Params_STRUCT_SIZE, NULL, 0, NULL};
    CHECK_CUPTI(cuptiDeviceGetChipName(&chip));
    CUpti_Profiler_Host_Initialize_Params host = {CUpti_Profiler_Host_Initialize_Params_STRUCT_SIZE, NULL, CUPTI_PROFILER_TYPE_RANGE_PROFILER,
                                                  chip.pChipName, NULL, NULL};
    CHECK_CUPTI(cuptiProfilerHostInitialize(&host));
    c->host = host.pHostObject;
    for (size_t i = 0; i < N_WANTED; i++) {
        CUpti_Profiler_Host_GetMetricProperties_Params properties = {CUpti_Profiler_Host_GetMetricProperties_Params_STRUCT_SIZE, NULL, c->host,
                                                                      wanted[i].metric, NULL, NULL, NULL, CUPTI_METRIC_TYPE_COUNTER};
        if (cuptiProfilerHostGetMetricProperties(&properties) == CUPTI_SUCCESS) {
            c->keys[c->n_metrics] = (int)i;
            c->metrics[c->n_metrics++] = wanted[i].metric;
        } else {
            size_t used = strlen(c->missing);
            snprintf(c->missing + used, sizeof c->missing - used, "%s%s", used ? ", " : "", wanted[i].metric);
        }
    }
    for (size_t m = 0; m < c->n_metrics; m++)
        if (!strcmp(wanted[c->keys[m]].key, "tensor_ops_hgmma_fp16")) c->instruction_tensor_metrics = true;
    if (!c->n_metrics) return tm_error_set(error, TM_ERR_UNSUPPORTED, "counters: chip %s has none of the metrics asked for", chip.pChipName);
    CUpti_Profiler_Host_ConfigAddMetrics_Params add = {CUpti_Profiler_Host_ConfigAddMetrics_Params_STRUCT_SIZE, NULL, c->host, c->metrics,
                                                       c->n_metrics};
    CHECK_CUPTI(cuptiProfilerHostConfigAddMetrics(&add));
    CUpti_Profiler_Host_GetConfigImageSize_Params size = {CUpti_Profiler_Host_GetConfigImageSize_Params_STRUCT_SIZE, NULL, c->host, 0};
    CHECK_CUPTI(cuptiProfilerHostGetConfigImageSize(&size));
    c->config_size = size.configImageSize;
    c->config = (uint8_t *)malloc(c->config_size);
    if (!c->config) return tm_error_set(error, TM_ERR_NO_MEMORY, "counters: out of memory");
    CUpti_Profiler_Host_GetConfigImage_Params image = {CUpti_Profiler_Host_GetConfigImage_Params_STRUCT_SIZE, NULL, c->host, c->config_size,
                                                       c->config};
    CHECK_CUPTI(cuptiProfilerHostGetConfigImage(&image));
    CUpti_Profiler_Host_GetNumOfPasses_Params passes = {CUpti_Profiler_Host_GetNumOfPasses_Params_STRUCT_SIZE, NULL, c->config_size, c->config, 0};
    CHECK_CUPTI(cuptiProfilerHostGetNumOfPasses(&passes));
    c->passes = passes.numOfPasses;
    return TM_OK;
}

/* Launch callbacks during a pass: each kernel's name in launch order, which is the order of the
 * auto ranges. A runtime launch calls the driver underneath: the driver's callback inside a
 * runtime launch is skipped, so a kernel is named once whichever layer launched it. */
static thread_local int in_runtime_launch;

static bool is_runtime_launch(CUpti_CallbackId id) {
    return id == CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernel_v7000 || id == CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernel_ptsz_v7000 ||
           id == CUPTI_RUNTIME_TRACE_CBID_cudaLaunchCooperativeKernel_v9000 || id == CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_v11060 ||
           id == CUPTI_RUNTIME_TRACE_CBID_cudaLaunchKernelExC_ptsz_v11060 || id == CUPTI_RUNTIME_TRACE_CBID___cudaLaunchKernel_v13000 ||
           id == CUPTI_RUNTIME_TRACE_CBID___cudaLaunchKernel_ptsz_v13000;
}

static bool is_driver_launch(CUpti_CallbackId id) {
    return id == CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel || id == CUPTI_DRIVER_TRACE_CBID_cuLaunchKernel_ptsz ||
           id == CUPTI_DRIVER_TRACE_CBID_cuLaunchCooperativeKernel || id == CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx ||
           id == CUPTI_DRIVER_TRACE_CBID_cuLaunchKernelEx_ptsz;
}

static void remember_name(tm_counters *c, const char *symbol) {
    if (c->n_names == c->names_capacity) {
        size_t capacity = c->names_capacity ? 2 * c->names_capacity : 256;
        char **grown = (char **)realloc(c->names, capacity * sizeof *grown);
        if (!grown) return;
        c->names = grown, c->names_capacity = capacity;
    }
    int failed = 1;
    char *demangled = symbol ? abi::__cxa_demangle(symbol, NULL, NULL, &failed) : NULL;
    c->names[c->n_names++] = failed ? strdup(symbol ? symbol : "?") : demangled;
}

static void CUPTIAPI on_callback(void *user, CUpti_CallbackDomain domain, CUpti_CallbackId id, const void *data) {
    tm_counters *c = (tm_counters *)user;
    const CUpti_CallbackData *call = (const CUpti_CallbackData *)data;
    if (domain == CUPTI_CB_DOMAIN_RUNTIME_API && is_runtime_launch(id)) {
        if (call->callbackSite == CUPTI_API_ENTER) {
            in_runtime_launch++;
            remember_name(c, call->symbolName);
        } else {
            in_runtime_launch--;
        }
    } else if (domain == CUPTI_CB_DOMAIN_DRIVER_API && is_driver_launch(id) && call->callbackSite == CUPTI_API_ENTER && !in_runtime_launch) {
        remember_name(c, call->symbolName);
    }
}

static void forget_names(tm_counters *c) {
    for (size_t i = 0; i < c->n_names; i++) free(c->names[i]);
    c->n_names = 0;
}

/* The calling thread's current CUDA context, through the driver loaded by the CUDA runtime
 * (the harness does not link libcuda, so it still starts on machines without a driver). */
static CUcontext current_context(void) {
    void *driver = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (!driver) driver = dlopen("libcuda.so.1", RTLD_NOW);
    if (!driver) return NULL;
    CUresult (*get_current)(CUcontext *) = (CUresult(*)(CUcontext *))dlsym(driver, "cuCtxGetCurrent");
    CUcontext context = NULL;
    if (!get_current || get_current(&context) != CUDA_SUCCESS) context = NULL;
    return context;
}

static tm_status begin_pass(tm_counters *c, tm_error_t *error) {
    CUcontext context = current_context();
    if (!context) return tm_error_set(error, TM_ERR_UNSUPPORTED, "counters: no CUDA context on this thread (the runner made none)");
    CUpti_RangeProfiler_Enable_Params enable = {CUpti_RangeProfiler_Enable_Params_STRUCT_SIZE, NULL, context, NULL};
    CHECK_CUPTI(cuptiRangeProfilerEnable(&enable));
    c->object = enable.pRangeProfilerObject;
    CUpti_RangeProfiler_GetCounterDataSize_Params size = {CUpti_RangeProfiler_GetCounterDataSize_Params_STRUCT_SIZE, NULL, c->object, c->metrics,
                                                          c->n_metrics, MAX_RANGES, MAX_RANGES, 0};
    CHECK_CUPTI(cuptiRangeProfilerGetCounterDataSize(&size));
    free(c->image);
    c->image_size = size.counterDataSize;
    c->image = (uint8_t *)malloc(c->image_size);
    if (!c->image) return tm_error_set(error, TM_ERR_NO_MEMORY, "counters: out of memory for a %zu-byte counter image", c->image_size);
    CUpti_RangeProfiler_CounterDataImage_Initialize_Params initialize = {
        CUpti_RangeProfiler_CounterDataImage_Initialize_Params_STRUCT_SIZE, NULL, c->object, c->image_size, c->image};
    CHECK_CUPTI(cuptiRangeProfilerCounterDataImageInitialize(&initialize));
    CUpti_RangeProfiler_SetConfig_Params config = {CUpti_RangeProfiler_SetConfig_Params_STRUCT_SIZE};
    config.pRangeProfilerObject = c->object;
    config.configSize = c->config_size, config.pConfig = c->config;
    config.counterDataImageSize = c->image_size, config.pCounterDataImage = c->image;
    config.range = CUPTI_AutoRange, config.replayMode = CUPTI_KernelReplay;
    config.maxRangesPerPass = MAX_RANGES, config.numNestingLevels = 1, config.minNestingLevel = 1;
    config.passIndex = 0, config.targetNestingLevel = 1;
    CHECK_CUPTI(cuptiRangeProfilerSetConfig(&config));
    forget_names(c);
    CHECK_CUPTI(cuptiEnableDomain(1, c->subscriber, CUPTI_CB_DOMAIN_RUNTIME_API));
    CHECK_CUPTI(cuptiEnableDomain(1, c->subscriber, CUPTI_CB_DOMAIN_DRIVER_API));
    CUpti_RangeProfiler_Start_Params start = {CUpti_RangeProfiler_Start_Params_STRUCT_SIZE, NULL, c->object};
    CHECK_CUPTI(cuptiRangeProfilerStart(&start));
    return TM_OK;
}

static void disable(tm_counters *c) {
    if (c->subscriber) {
        cuptiEnableDomain(0, c->subscriber, CUPTI_CB_DOMAIN_RUNTIME_API);
        cuptiEnableDomain(0, c->subscriber, CUPTI_CB_DOMAIN_DRIVER_API);
    }
    if (!c->object) return;
    CUpti_RangeProfiler_Disable_Params params = {CUpti_RangeProfiler_Disable_Params_STRUCT_SIZE, NULL, c->object};
    cuptiRangeProfilerDisable(&params);
    c->object = NULL;
}

extern "C" tm_status tm_counters_begin_pass(tm_counters *c, tm_error_t *error) {
    tm_status status = begin_pass(c, error);
    if (status) disable(c); /* a half-configured pass leaves nothing enabled */
    return status;
}

static tm_status store_value(sqlite3_stmt *insert, int64_t case_id, const char *scope, const char *counter, double value) {
    sqlite3_reset(insert);
    sqlite3_bind_int64(insert, 1, case_id);
    sqlite3_bind_text(insert, 2, scope, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(insert, 3, counter, -1, SQLITE_STATIC);
    sqlite3_bind_double(insert, 4, value);
    return sqlite3_step(insert) == SQLITE_DONE ? TM_OK : TM_ERR_IO;
}

/* Value of wanted[key] among this pass's values (0 when the chip lacks it). */
static double value_of(const tm_counters *c, const double *values, const char *key) {
    for (size_t m = 0; m < c->n_metrics; m++)
        if (!strcmp(wanted[c->keys[m]].key, key)) return values[m];
    return 0;
}

/* Every range's values plus the derived rates: flops count an FMA as two (FP16 instructions
 * as ncu's roofline does, one per thread instruction); tensor ops as the counters report them. */
static tm_status store_range(const tm_counters *c, sqlite3_stmt *insert, int64_t case_id, const char *scope, const double *values, double *totals) {
    tm_status status = TM_OK;
    for (size_t m = 0; m < c->n_metrics && !status; m++) status = store_value(insert, case_id, scope, wanted[c->keys[m]].key, values[m]);
    const double seconds = value_of(c, values, "gpu_time_ns") * 1e-9;
    const double bytes = value_of(c, values, "dram_bytes_read") + value_of(c, values, "dram_bytes_write");
    const double fp32 = 2 * value_of(c, values, "fp32_ffma") + value_of(c, values, "fp32_fadd") + value_of(c, values, "fp32_fmul");
    const double fp16 = 2 * value_of(c, values, "fp16_hfma") + value_of(c, values, "fp16_hadd") + value_of(c, values, "fp16_hmul");
    const double tensor = c->instruction_tensor_metrics
                              ? value_of(c, values, "tensor_ops_hmma_fp16") + value_of(c, values, "tensor_ops_hmma_bf16") +
                                    value_of(c, values, "tensor_ops_hgmma_fp16") + value_of(c, values, "tensor_ops_hgmma_bf16")
                              : value_of(c, values, "tensor_ops_fp16_fp32") + value_of(c, values, "tensor_ops_fp16_fp16") +
                                    value_of(c, values, "tensor_ops_bf16_fp32");
    const double derived[] = {bytes, fp32, fp16, tensor, seconds > 0 ? bytes / seconds / 1e9 : 0,
                              seconds > 0 ? (fp32 + fp16 + tensor) / seconds / 1e12 : 0};
    static const char *const derived_keys[] = {"dram_bytes", "fp32_flops", "fp16_flops", "tensor_flops", "achieved_gb_per_s",
                                               "achieved_tflop_per_s"};
    for (size_t i = 0; i < 6 && !status; i++) status = store_value(insert, case_id, scope, derived_keys[i], derived[i]);
    if (totals) totals[0] += seconds, totals[1] += bytes, totals[2] += fp32 + fp16 + tensor;
    return status;
}

extern "C" tm_status tm_counters_end_pass(tm_counters *c, tm_store *store, int64_t case_id, int *n_kernels, tm_error_t *error) {
    *n_kernels = 0;
    CUpti_RangeProfiler_Stop_Params stop = {CUpti_RangeProfiler_Stop_Params_STRUCT_SIZE, NULL, c->object, 0, 0, 0};
    CUptiResult result = cuptiRangeProfilerStop(&stop);
    CUpti_RangeProfiler_DecodeData_Params decode = {CUpti_RangeProfiler_DecodeData_Params_STRUCT_SIZE, NULL, c->object, 0};
    if (result == CUPTI_SUCCESS) result = cuptiRangeProfilerDecodeData(&decode);
    if (result != CUPTI_SUCCESS) {
        disable(c);
        return cupti_failure(error, "cuptiRangeProfilerStop/DecodeData", result);
    }
    CUpti_RangeProfiler_GetCounterDataInfo_Params info = {CUpti_RangeProfiler_GetCounterDataInfo_Params_STRUCT_SIZE, NULL, c->image,
                                                          c->image_size, 0};
    result = cuptiRangeProfilerGetCounterDataInfo(&info);
    if (result != CUPTI_SUCCESS) {
        disable(c);
        return cupti_failure(error, "cuptiRangeProfilerGetCounterDataInfo", result);
    }
    sqlite3 *db = tm_store_db(store);
    sqlite3_stmt *insert = NULL;
    tm_status status = TM_OK;
    if (sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO hardware_counters (case_id, scope, counter, value) VALUES (?,?,?,?)", -1, &insert, NULL) !=
            SQLITE_OK)
        status = TM_ERR_IO;
    double values[N_WANTED], totals[3] = {0, 0, 0};
    for (size_t r = 0; !status && r < info.numTotalRanges; r++) {
        CUpti_Profiler_Host_EvaluateToGpuValues_Params evaluate = {CUpti_Profiler_Host_EvaluateToGpuValues_Params_STRUCT_SIZE, NULL, c->host,
                                                                   c->image, c->image_size, r, c->metrics, c->n_metrics, values};
        result = cuptiProfilerHostEvaluateToGpuValues(&evaluate);
        if (result != CUPTI_SUCCESS) {
            status = cupti_failure(error, "cuptiProfilerHostEvaluateToGpuValues", result);
            break;
        }
        /* auto ranges are named by their index; the launch callbacks name the kernel when every
         * range had its launch seen (graph launches have none) */
        char scope[512];
        if (c->n_names == info.numTotalRanges) snprintf(scope, sizeof scope, "kernel %03zu %s", r, c->names[r]);
        else snprintf(scope, sizeof scope, "kernel %03zu", r);
        status = store_range(c, insert, case_id, scope, values, totals);
    }
    const double pass[] = {(double)info.numTotalRanges, (double)decode.numOfRangeDropped, (double)c->passes, totals[0] * 1e9, totals[1],
                           totals[0] > 0 ? totals[1] / totals[0] / 1e9 : 0, totals[0] > 0 ? totals[2] / totals[0] / 1e12 : 0};
    static const char *const pass_keys[] = {"kernels", "dropped_ranges", "replay_passes", "gpu_time_ns", "dram_bytes", "achieved_gb_per_s",
                                            "achieved_tflop_per_s"};
    for (size_t i = 0; !status && i < sizeof pass / sizeof pass[0]; i++)
        if (store_value(insert, case_id, "pass", pass_keys[i], pass[i])) status = TM_ERR_IO;
    if (status == TM_ERR_IO) tm_error_set(error, TM_ERR_IO, "counters: writing: %s", sqlite3_errmsg(db));
    sqlite3_finalize(insert);
    sqlite3_exec(db, status ? "ROLLBACK" : "COMMIT", NULL, NULL, NULL);
    disable(c);
    *n_kernels = (int)info.numTotalRanges;
    return status;
}

extern "C" const char *tm_counters_missing(const tm_counters *c) { return c ? c->missing : ""; }

extern "C" void tm_counters_stop(tm_counters *c) {
    if (!c) return;
    disable(c);
    if (c->subscriber) cuptiUnsubscribe(c->subscriber);
    forget_names(c);
    free(c->names);
    if (c->host) {
        CUpti_Profiler_Host_Deinitialize_Params params = {CUpti_Profiler_Host_Deinitialize_Params_STRUCT_SIZE, NULL, c->host};
        cuptiProfilerHostDeinitialize(&params);
    }
    free(c->config);
    free(c->image);
    free(c);
}


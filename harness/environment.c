/*
 * environment.c - what a run ran on: git state, build, host, CPU, and the GPUs when nvidia-smi
 * answers (driver, CUDA version, SM/memory clocks, power limit). Strings are malloc'ed into
 * the tm_run_info (tm_environment_free releases them); anything unknown stays NULL / 0.
 */
#define _POSIX_C_SOURCE 200809L
#include "environment.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* First line of a command's output, trimmed; NULL when it fails or prints nothing. */
static char *command_line_output(const char *command) {
    FILE *pipe = popen(command, "r");
    if (!pipe) return NULL;
    char line[1024] = "";
    char *result = NULL;
    if (fgets(line, sizeof line, pipe)) {
        line[strcspn(line, "\r\n")] = 0;
        if (line[0]) result = strdup(line);
    }
    if (pclose(pipe) != 0) {
        free(result);
        result = NULL;
    }
    return result;
}

static char *cpu_model(void) {
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return NULL;
    char line[512];
    char *model = NULL;
    while (!model && fgets(line, sizeof line, f))
        if (!strncmp(line, "model name", 10)) {
            char *colon = strchr(line, ':');
            if (colon) {
                colon += 2;
                colon[strcspn(colon, "\n")] = 0;
                model = strdup(colon);
            }
        }
    fclose(f);
    return model;
}

void tm_environment_collect(tm_run_info *info) {
    info->git_commit = command_line_output("git rev-parse HEAD 2>/dev/null");
    info->git_branch = command_line_output("git rev-parse --abbrev-ref HEAD 2>/dev/null");
    char *dirty = command_line_output("git status --porcelain --untracked-files=no 2>/dev/null | head -1");
    info->git_dirty = dirty != NULL;
    free(dirty);
    info->build_type = TM_BUILD_TYPE;
    info->build_flags = TM_BUILD_FLAGS;
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) == 0) info->host_name = strdup(host);
    info->cpu_model = cpu_model();
    info->cpu_count = (int)sysconf(_SC_NPROCESSORS_ONLN);
    char *gpus = command_line_output(
        "nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,power.limit --format=csv,noheader,nounits "
        "2>/dev/null | paste -sd ';'");
    if (gpus) {
        char name[256] = "", driver[64] = "";
        int sm = 0, memory = 0;
        double power = 0;
        if (sscanf(gpus, "%255[^,], %63[^,], %d, %d, %lf", name, driver, &sm, &memory, &power) >= 2) {
            info->gpu_names = strdup(gpus);
            info->gpu_driver = strdup(driver);
            info->gpu_sm_clock_mhz = sm;
            info->gpu_memory_clock_mhz = memory;
            info->gpu_power_limit_w = power;
            info->gpu_count = 1;
            for (const char *p = gpus; (p = strchr(p, ';')); p++) info->gpu_count++;
        }
        free(gpus);
        info->cuda_version = command_line_output("nvidia-smi 2>/dev/null | grep -o 'CUDA Version: [0-9.]*' | cut -d' ' -f3");
    }
}

void tm_environment_free(tm_run_info *info) {
    free((char *)info->git_commit), free((char *)info->git_branch), free((char *)info->host_name);
    free((char *)info->cpu_model), free((char *)info->gpu_names), free((char *)info->gpu_driver);
    free((char *)info->cuda_version);
}

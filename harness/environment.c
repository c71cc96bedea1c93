/*
 * environment.c - what a run ran on: git state (of the build, see cmake/build_info.cmake), build,
 * host, CPU, and the GPUs through NVML
 * (nvml.h, loaded at run time when the driver provides it: names, count, driver and CUDA
 * versions, max SM/memory clocks, power limit). Strings are malloc'ed into the tm_run_info
 * (tm_environment_free releases them); anything unknown stays NULL / 0.
 */
#define _POSIX_C_SOURCE 200809L
#include "environment.h"
#include "nvml.h"

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

/* The GPUs through NVML (nvml.h): names, count, driver and CUDA versions, and the first device's
 * max clocks and power limit. No driver: no GPU facts. */
static void collect_gpus(tm_run_info *info) {
    tm_nvml *nvml = tm_nvml_open(NULL, 0);
    if (!nvml) return;
    unsigned int n = 0;
    if (nvml->name && nvml->device_count(&n) == 0 && n > 0) {
        char names[2048] = "", text[96];
        for (unsigned int i = 0; i < n; i++) {
            tm_nvml_device device;
            if (nvml->handle_by_index(i, &device) != 0 || nvml->name(device, text, sizeof text) != 0) continue;
            snprintf(names + strlen(names), sizeof names - strlen(names), "%s%s", i ? "; " : "", text);
            if (i == 0) { /* clocks and power of the first device */
                unsigned int value;
                if (nvml->max_clock && nvml->max_clock(device, TM_NVML_CLOCK_SM, &value) == 0) info->gpu_sm_clock_mhz = (int)value;
                if (nvml->max_clock && nvml->max_clock(device, TM_NVML_CLOCK_MEMORY, &value) == 0) info->gpu_memory_clock_mhz = (int)value;
                if (nvml->power_limit && nvml->power_limit(device, &value) == 0) info->gpu_power_limit_w = value / 1000.0;
            }
        }
        info->gpu_count = (int)n;
        info->gpu_names = strdup(names);
        if (nvml->driver_version && nvml->driver_version(text, sizeof text) == 0) info->gpu_driver = strdup(text);
        int version;
        if (nvml->cuda_driver_version && nvml->cuda_driver_version(&version) == 0) {
            snprintf(text, sizeof text, "%d.%d", version / 1000, (version % 1000) / 10);
            info->cuda_version = strdup(text);
        }
    }
    tm_nvml_close(nvml);
}

/* generated/build_info.c: the source's git state when this binary was built */
extern const char tm_build_git_commit[], tm_build_git_branch[];
extern const int tm_build_git_dirty;

void tm_environment_collect(tm_run_info *info) {
    /* the build's git state: what actually runs, wherever the binary was carried */
    if (tm_build_git_commit[0]) {
        info->git_commit = strdup(tm_build_git_commit);
        info->git_branch = tm_build_git_branch[0] ? strdup(tm_build_git_branch) : NULL;
        info->git_dirty = tm_build_git_dirty;
    } else { /* built outside a git checkout: the directory the run starts in */
        info->git_commit = command_line_output("git rev-parse HEAD 2>/dev/null");
        info->git_branch = command_line_output("git rev-parse --abbrev-ref HEAD 2>/dev/null");
        char *dirty = command_line_output("git status --porcelain --untracked-files=no 2>/dev/null | head -1");
        info->git_dirty = dirty != NULL;
        free(dirty);
    }
    info->build_type = TM_BUILD_TYPE;
    info->build_flags = TM_BUILD_FLAGS;
    char host[256] = "";
    if (gethostname(host, sizeof host - 1) == 0) info->host_name = strdup(host);
    info->cpu_model = cpu_model();
    info->cpu_count = (int)sysconf(_SC_NPROCESSORS_ONLN);
    collect_gpus(info);
}

void tm_environment_free(tm_run_info *info) {
    free((char *)info->git_commit), free((char *)info->git_branch), free((char *)info->host_name);
    free((char *)info->cpu_model), free((char *)info->gpu_names), free((char *)info->gpu_driver);
    free((char *)info->cuda_version);
}

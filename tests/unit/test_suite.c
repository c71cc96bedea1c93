/*
 * test_suite.c - suite files: the valid ones load and expand to the expected cases (axis forms,
 * cartesian order with the last axis fastest, skip rules, fixed parameters, defaults); each broken
 * one is refused with the message its first line states ("# expect: ..."), which names
 * file:line:column and the key. Run from tests/suites (ctest sets the working directory).
 */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "suite.h"

static void test_valid(void) {
    tm_suite *s;
    tm_error_t error = {0};
    CHECK(!tm_suite_load("valid/axes.yaml", &s, &error), "%s", error.message);
    if (!s) return;
    tm_suite_case *cases;
    int n;
    CHECK(!tm_suite_expand(s, &cases, &n, &error), "%s", error.message);
    CHECK(n == 2 * 3 * 3 - 3, "15 cases after the skip rule, got %d", n);
    CHECK(!strcmp(cases[0].name, "axes/batch=1,prompt_tokens=16,ctx=128"), "first case %s", cases[0].name);
    CHECK(!strcmp(cases[1].name, "axes/batch=1,prompt_tokens=16,ctx=256"), "last axis varies fastest: %s", cases[1].name);
    CHECK(!strcmp(cases[n - 1].name, "axes/batch=2,prompt_tokens=32,ctx=512"), "last case %s", cases[n - 1].name);
    int skipped_present = 0;
    for (int i = 0; i < n; i++)
        skipped_present += !strcmp(tm_case_param(&cases[i], "batch", ""), "2") &&
                           !strcmp(tm_case_param(&cases[i], "prompt_tokens", ""), "48");
    CHECK(skipped_present == 0, "skip rule applied");
    CHECK(!strcmp(tm_case_param(&cases[3], "threads", ""), "1") && !strcmp(tm_case_param(&cases[3], "gen_tokens", ""), "4"),
          "fixed params in every case");
    char *json = tm_case_params_json(&cases[0]);
    CHECK(json && !strcmp(json, "{\"threads\": 1, \"gen_tokens\": 4, \"batch\": 1, \"prompt_tokens\": 16, \"ctx\": 128}"),
          "params json %s", json ? json : "(null)");
    free(json);
    CHECK(s->warmup == 0 && s->min_repetitions == 2 && s->max_relative_noise == 0.5 && s->timeout_seconds == 5, "stop rule");
    tm_suite_cases_free(cases, n);
    tm_suite_free(s);

    CHECK(!tm_suite_load("valid/minimal.yaml", &s, &error), "%s", error.message);
    if (!s) return;
    CHECK(!tm_suite_expand(s, &cases, &n, &error) && n == 1 && !strcmp(cases[0].name, "minimal/"), "one case without axes");
    CHECK(s->warmup == 1 && s->min_repetitions == 3 && s->max_relative_noise == 0.05, "defaults");
    tm_suite_cases_free(cases, n);
    tm_suite_free(s);
    CHECK(tm_suite_load("valid/missing.yaml", &s, &error) == TM_ERR_IO && strstr(error.message, "valid/missing.yaml"),
          "a missing file names the path: %s", error.message);
}

static void test_broken(void) {
    DIR *dir = opendir("broken");
    CHECK(dir != NULL, "tests/suites/broken exists");
    if (!dir) return;
    int files = 0;
    for (struct dirent *entry; (entry = readdir(dir));) {
        size_t length = strlen(entry->d_name);
        if (length < 6 || strcmp(entry->d_name + length - 5, ".yaml")) continue;
        char path[512], expect[512] = "";
        snprintf(path, sizeof path, "broken/%s", entry->d_name);
        FILE *f = fopen(path, "r");
        if (f && fgets(expect, sizeof expect, f)) expect[strcspn(expect, "\n")] = 0;
        if (f) fclose(f);
        const char *wanted = strncmp(expect, "# expect: ", 10) == 0 ? expect + 10 : NULL;
        CHECK(wanted != NULL, "%s: first line must be '# expect: MESSAGE'", path);
        tm_suite *s = NULL;
        tm_error_t error = {0};
        tm_status status = tm_suite_load(path, &s, &error);
        CHECK(status == TM_ERR_FORMAT && s == NULL, "%s must be refused", path);
        CHECK(wanted && strstr(error.message, wanted), "%s: message '%s' lacks '%s'", path, error.message, wanted ? wanted : "");
        tm_suite_free(s);
        files++;
    }
    closedir(dir);
    CHECK(files >= 10, "%d broken suites checked", files);
}

/* The kernels kind's switches are parameters the loader accepts (exact: the float32 flash kernel;
 * whole: decode attention without splits; chain: launches a repetition). */
static void test_kernels_flags(void) {
    tm_suite *s = NULL;
    tm_error_t error = {0};
    CHECK(!tm_suite_load("valid/kernels-flags.yaml", &s, &error), "%s", error.message);
    if (!s) return;
    tm_suite_case *cases;
    int n = 0;
    CHECK(!tm_suite_expand(s, &cases, &n, &error) && n == 2, "two cases: %s", error.message);
    if (n == 2) {
        CHECK(!strcmp(tm_case_param(&cases[0], "exact", ""), "0") && !strcmp(tm_case_param(&cases[1], "whole", ""), "1") &&
                  !strcmp(tm_case_param(&cases[1], "chain", ""), "16"),
              "exact, whole and chain reach the cases");
        tm_suite_cases_free(cases, n);
    }
    tm_suite_free(s);
}

/* Every suite the repository ships (the .yaml files of suites/) loads and expands to at least one case. */
static void test_repository_suites(void) {
    DIR *dir = opendir("../../suites");
    CHECK(dir != NULL, "suites/ exists");
    if (!dir) return;
    int files = 0;
    for (struct dirent *entry; (entry = readdir(dir));) {
        size_t length = strlen(entry->d_name);
        if (length < 6 || strcmp(entry->d_name + length - 5, ".yaml")) continue;
        char path[512];
        snprintf(path, sizeof path, "../../suites/%s", entry->d_name);
        tm_suite *s = NULL;
        tm_error_t error = {0};
        tm_suite_case *cases = NULL;
        int n = 0;
        CHECK(!tm_suite_load(path, &s, &error) && !tm_suite_expand(s, &cases, &n, &error) && n >= 1, "%s: %s", path, error.message);
        if (cases) tm_suite_cases_free(cases, n);
        tm_suite_free(s);
        files++;
    }
    closedir(dir);
    CHECK(files >= 10, "%d repository suites checked", files);
}

int main(void) {
    test_valid();
    test_broken();
    test_kernels_flags();
    test_repository_suites();
    return check_report("test_suite");
}

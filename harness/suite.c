/*
 * suite.c - suite files (YAML, through libyaml's document API) and case expansion (see suite.h).
 *
 * DESIGN: libyaml builds a node tree whose nodes carry their line and column; validation walks
 * it once, so every message can point at the node it is about ("file:line:col: ..."). Unknown
 * keys are matched against the valid ones by edit distance to suggest the intended key.
 */
#define _POSIX_C_SOURCE 200809L
#include "suite.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "common.h"

static const char *const top_keys[] = {"name", "description", "kind", "model", "params", "axes", "skip", "warmup", "stop", NULL};
static const char *const stop_keys[] = {"min_repetitions", "min_seconds", "max_relative_noise", "timeout_seconds", NULL};
static const char *const kinds[] = {"throughput", "memory", "kernels", "ipc", "scaling", NULL};
/* parameters each kind understands (axes and params share them) */
static const char *const throughput_params[] = {"batch", "prompt_tokens", "gen_tokens", "threads", "precision", "kv_type",
                                                "max_batch_tokens", "ctx", "device", "max_sequences", "model",
                                                "kv_bytes", "step_events", "overlap", "temperature", "top_k", "top_p",
                                                "min_p", "repetition_penalty", "penalty_last_n", NULL};
static const char *const kernels_params[] = {"op", "type", "rows", "cols", "threads", "head_dim", "tokens", "batch",
                                              "context", "causal", "exact", "whole", "heads", "kv_heads", "chain", "words", "power_seconds", "device", NULL};
static const char *const ipc_params[] = {"payload_bytes", "mode", NULL};
static const char *const scaling_params[] = {"gpus", "batch", "prompt_tokens", "gen_tokens", NULL};

static const char *const *params_of_kind(const char *kind) {
    if (!strcmp(kind, "throughput") || !strcmp(kind, "memory")) return throughput_params;
    if (!strcmp(kind, "kernels")) return kernels_params;
    if (!strcmp(kind, "ipc")) return ipc_params;
    return scaling_params;
}

/* ---- messages ----------------------------------------------------------------------------- */

static size_t edit_distance(const char *a, const char *b) {
    size_t n = strlen(a), m = strlen(b), row[64 + 1];
    if (m > 64) return 99;
    for (size_t j = 0; j <= m; j++) row[j] = j;
    for (size_t i = 1; i <= n; i++) {
        size_t diagonal = row[0];
        row[0] = i;
        for (size_t j = 1; j <= m; j++) {
            size_t above = row[j];
            size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
            row[j] = TM_MIN(TM_MIN(row[j] + 1, row[j - 1] + 1), diagonal + cost);
            diagonal = above;
        }
    }
    return row[m];
}

/* " (did you mean 'x'?)" for the nearest valid key within distance 3, else the valid list. */
static void suggestion(const char *key, const char *const *valid, char *out, size_t size) {
    const char *best = NULL;
    size_t best_distance = 4;
    for (int i = 0; valid[i] && !best; i++) /* an abbreviation of a valid key */
        if (strlen(key) >= 3 && (!strncmp(valid[i], key, strlen(key) - 1) || !strncmp(valid[i], key, 3)))
            if (edit_distance(key, valid[i]) < strlen(valid[i])) best = valid[i], best_distance = 0;
    for (int i = 0; valid[i] && best_distance; i++) {
        size_t d = edit_distance(key, valid[i]);
        if (d < best_distance) {
            best_distance = d;
            best = valid[i];
        }
    }
    if (best) {
        snprintf(out, size, " (did you mean '%s'?)", best);
        return;
    }
    size_t n = (size_t)snprintf(out, size, " (valid:");
    for (int i = 0; valid[i] && n < size; i++) n += (size_t)snprintf(out + n, size - n, " %s", valid[i]);
    if (n < size) snprintf(out + n, size - n, ")");
}

typedef struct parse_context {
    const char *path;
    yaml_document_t *document;
    tm_error_t *error;
} parse_context;

TM_PRINTF(3, 4)
static tm_status node_error(parse_context *c, const yaml_node_t *node, const char *format, ...) {
    char what[384];
    va_list args;
    va_start(args, format);
    vsnprintf(what, sizeof what, format, args);
    va_end(args);
    return tm_error_set(c->error, TM_ERR_FORMAT, "%s:%lu:%lu: %s", c->path, (unsigned long)node->start_mark.line + 1,
                        (unsigned long)node->start_mark.column + 1, what);
}

static const char *scalar(const yaml_node_t *node) {
    return node && node->type == YAML_SCALAR_NODE ? (const char *)node->data.scalar.value : NULL;
}

static yaml_node_t *node_at(parse_context *c, int index) { return yaml_document_get_node(c->document, index); }

static bool parse_integer(const char *text, long long min, long long max, long long *out) {
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno || end == text || *end || value < min || value > max) return false;
    *out = value;
    return true;
}

static bool parse_number(const char *text, double min, double max, double *out) {
    char *end;
    double value = strtod(text, &end);
    if (end == text || *end || !(value >= min && value <= max)) return false;
    *out = value;
    return true;
}

/* ---- loading ------------------------------------------------------------------------------ */

void tm_suite_free(tm_suite *s) {
    if (!s) return;
    for (int i = 0; i < s->n_params; i++) free(s->params[i].name), free(s->params[i].value);
    free(s->params);
    for (int i = 0; i < s->n_axes; i++) {
        for (int k = 0; k < s->axes[i].n_values; k++) free(s->axes[i].values[k]);
        free(s->axes[i].values);
        free(s->axes[i].name);
    }
    free(s->axes);
    for (int i = 0; i < s->n_skip; i++) {
        for (int k = 0; k < s->skip[i].n_params; k++) free(s->skip[i].params[k].name), free(s->skip[i].params[k].value);
        free(s->skip[i].params);
    }
    free(s->skip);
    free(s->path), free(s->name), free(s->kind), free(s->model);
    free(s);
}

static tm_status check_param_name(parse_context *c, const yaml_node_t *key_node, const char *kind) {
    const char *key = scalar(key_node);
    const char *const *valid = params_of_kind(kind);
    for (int i = 0; valid[i]; i++)
        if (!strcmp(valid[i], key)) return TM_OK;
    char hint[256];
    suggestion(key, valid, hint, sizeof hint);
    return node_error(c, key_node, "unknown %s parameter '%s'%s", kind, key, hint);
}

/* A mapping of parameter -> scalar into *params. */
static tm_status parse_params(parse_context *c, yaml_node_t *node, const char *kind, const char *what,
                              tm_suite_param **params, int *n_params) {
    if (node->type != YAML_MAPPING_NODE) return node_error(c, node, "'%s' must be a mapping of parameter: value", what);
    int n = (int)(node->data.mapping.pairs.top - node->data.mapping.pairs.start);
    *params = calloc((size_t)(n ? n : 1), sizeof **params);
    if (!*params) return tm_error_set(c->error, TM_ERR_NO_MEMORY, "out of memory");
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start; pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = node_at(c, pair->key), *value = node_at(c, pair->value);
        if (!scalar(key)) return node_error(c, key, "a parameter name must be a plain word");
        tm_status s = check_param_name(c, key, kind);
        if (s) return s;
        if (!scalar(value)) return node_error(c, value, "parameter '%s' must have a single value", scalar(key));
        (*params)[*n_params].name = strdup(scalar(key));
        (*params)[(*n_params)++].value = strdup(scalar(value));
    }
    return TM_OK;
}

/* An axis: a list of scalars, {range: [start, stop, step]} or {powers_of_two: [from, to]}. */
static tm_status parse_axis(parse_context *c, yaml_node_t *key, yaml_node_t *value, tm_suite_axis *axis) {
    axis->name = strdup(scalar(key));
    if (value->type == YAML_SEQUENCE_NODE) {
        int n = (int)(value->data.sequence.items.top - value->data.sequence.items.start);
        if (n == 0) return node_error(c, value, "axis '%s' has no values", axis->name);
        axis->values = calloc((size_t)n, sizeof *axis->values);
        for (yaml_node_item_t *item = value->data.sequence.items.start; item < value->data.sequence.items.top; item++) {
            const char *text = scalar(node_at(c, *item));
            if (!text) return node_error(c, node_at(c, *item), "axis '%s': values must be scalars", axis->name);
            axis->values[axis->n_values++] = strdup(text);
        }
        return TM_OK;
    }
    const char *form = NULL;
    yaml_node_t *bounds = NULL;
    if (value->type == YAML_MAPPING_NODE && value->data.mapping.pairs.top - value->data.mapping.pairs.start == 1) {
        form = scalar(node_at(c, value->data.mapping.pairs.start->key));
        bounds = node_at(c, value->data.mapping.pairs.start->value);
    }
    static const char *const forms[] = {"range", "powers_of_two", NULL};
    if (!form || (strcmp(form, "range") && strcmp(form, "powers_of_two"))) {
        char hint[128] = "";
        if (form) suggestion(form, forms, hint, sizeof hint);
        return node_error(c, value, "axis '%s': expected a list, {range: [start, stop, step]} or {powers_of_two: "
                                    "[from, to]}%s", axis->name, hint);
    }
    bool range = !strcmp(form, "range");
    long long numbers[3] = {0, 0, 1};
    int expected = range ? 3 : 2, got = 0;
    if (bounds->type == YAML_SEQUENCE_NODE)
        for (yaml_node_item_t *item = bounds->data.sequence.items.start; item < bounds->data.sequence.items.top; item++) {
            const char *text = scalar(node_at(c, *item));
            if (got >= expected || !text || !parse_integer(text, 0, 1ll << 40, &numbers[got]))
                return node_error(c, node_at(c, *item), "axis '%s': %s takes %d non-negative integers", axis->name, form,
                                  expected);
            got++;
        }
    if (got != expected)
        return node_error(c, bounds, "axis '%s': %s takes %d non-negative integers", axis->name, form, expected);
    if (range ? (numbers[2] <= 0 || numbers[1] < numbers[0])
              : (numbers[0] <= 0 || numbers[1] < numbers[0] || (numbers[0] & (numbers[0] - 1)) ||
                 (numbers[1] & (numbers[1] - 1))))
        return node_error(c, bounds, "axis '%s': %s bounds are empty or invalid (%lld, %lld%s)", axis->name, form, numbers[0],
                          numbers[1], range ? ", step > 0" : "; both powers of two");
    long long count = range ? (numbers[1] - numbers[0]) / numbers[2] + 1 : 0;
    if (!range)
        for (long long v = numbers[0]; v <= numbers[1]; v *= 2) count++;
    if (count > 4096) return node_error(c, bounds, "axis '%s' would have %lld values (at most 4096)", axis->name, count);
    axis->values = calloc((size_t)count, sizeof *axis->values);
    for (long long v = numbers[0]; v <= numbers[1]; v = range ? v + numbers[2] : v * 2) {
        char text[32];
        snprintf(text, sizeof text, "%lld", v);
        axis->values[axis->n_values++] = strdup(text);
    }
    return TM_OK;
}

static tm_status parse_stop(parse_context *c, yaml_node_t *node, tm_suite *s) {
    if (node->type != YAML_MAPPING_NODE) return node_error(c, node, "'stop' must be a mapping");
    for (yaml_node_pair_t *pair = node->data.mapping.pairs.start; pair < node->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = node_at(c, pair->key), *value = node_at(c, pair->value);
        const char *name = scalar(key), *text = scalar(value);
        long long integer;
        double number;
        if (!name) return node_error(c, key, "a key must be a plain word");
        if (!strcmp(name, "min_repetitions")) {
            if (!text || !parse_integer(text, 1, 100000, &integer))
                return node_error(c, value, "'stop.min_repetitions' must be an integer in [1, 100000]");
            s->min_repetitions = (int)integer;
        } else if (!strcmp(name, "min_seconds") || !strcmp(name, "timeout_seconds") || !strcmp(name, "max_relative_noise")) {
            double max = !strcmp(name, "max_relative_noise") ? 1.0 : 86400.0;
            if (!text || !parse_number(text, 0, max, &number))
                return node_error(c, value, "'stop.%s' must be a number in [0, %g]", name, max);
            if (!strcmp(name, "min_seconds")) s->min_seconds = number;
            else if (!strcmp(name, "timeout_seconds")) s->timeout_seconds = number;
            else s->max_relative_noise = number;
        } else {
            char hint[256];
            suggestion(name, stop_keys, hint, sizeof hint);
            return node_error(c, key, "unknown key 'stop.%s'%s", name, hint);
        }
    }
    return TM_OK;
}

static tm_status parse_suite(parse_context *c, yaml_node_t *root, tm_suite *s) {
    if (!root || root->type != YAML_MAPPING_NODE)
        return root ? node_error(c, root, "a suite must be a mapping (name, kind, model, params, axes, ...)")
                    : tm_error_set(c->error, TM_ERR_FORMAT, "%s: the file is empty", c->path);
    yaml_node_t *params = NULL, *axes = NULL, *skip = NULL;
    for (yaml_node_pair_t *pair = root->data.mapping.pairs.start; pair < root->data.mapping.pairs.top; pair++) {
        yaml_node_t *key = node_at(c, pair->key), *value = node_at(c, pair->value);
        const char *name = scalar(key), *text = scalar(value);
        if (!name) return node_error(c, key, "a key must be a plain word");
        long long integer;
        tm_status status = TM_OK;
        if (!strcmp(name, "name")) {
            if (!text || !*text) return node_error(c, value, "'name' must be a non-empty string");
            s->name = strdup(text);
        } else if (!strcmp(name, "description")) {
            if (!text) return node_error(c, value, "'description' must be a string");
        } else if (!strcmp(name, "kind")) {
            bool known = false;
            for (int i = 0; text && kinds[i]; i++) known |= !strcmp(kinds[i], text);
            if (!known) {
                char hint[256];
                suggestion(text ? text : "", kinds, hint, sizeof hint);
                return node_error(c, value, "unknown kind '%s'%s", text ? text : "(not a scalar)", hint);
            }
            s->kind = strdup(text);
        } else if (!strcmp(name, "model")) {
            if (!text || !*text) return node_error(c, value, "'model' must be a path or synthetic:PRESET:TYPE");
            s->model = strdup(text);
        } else if (!strcmp(name, "warmup")) {
            if (!text || !parse_integer(text, 0, 1000, &integer))
                return node_error(c, value, "'warmup' must be an integer in [0, 1000]");
            s->warmup = (int)integer;
        } else if (!strcmp(name, "stop")) {
            status = parse_stop(c, value, s);
        } else if (!strcmp(name, "params")) {
            params = value;
        } else if (!strcmp(name, "axes")) {
            axes = value;
        } else if (!strcmp(name, "skip")) {
            skip = value;
        } else {
            char hint[256];
            suggestion(name, top_keys, hint, sizeof hint);
            return node_error(c, key, "unknown key '%s'%s", name, hint);
        }
        if (status) return status;
    }
    if (!s->name) return node_error(c, root, "the suite has no 'name'");
    if (!s->kind) return node_error(c, root, "the suite has no 'kind' (throughput, memory, kernels, ipc, scaling)");
    tm_status status;
    if (params && (status = parse_params(c, params, s->kind, "params", &s->params, &s->n_params))) return status;
    if (axes) {
        if (axes->type != YAML_MAPPING_NODE) return node_error(c, axes, "'axes' must be a mapping of parameter: values");
        int n = (int)(axes->data.mapping.pairs.top - axes->data.mapping.pairs.start);
        s->axes = calloc((size_t)(n ? n : 1), sizeof *s->axes);
        for (yaml_node_pair_t *pair = axes->data.mapping.pairs.start; pair < axes->data.mapping.pairs.top; pair++) {
            yaml_node_t *key = node_at(c, pair->key);
            if (!scalar(key)) return node_error(c, key, "an axis name must be a plain word");
            if ((status = check_param_name(c, key, s->kind))) return status;
            for (int i = 0; i < s->n_params; i++)
                if (!strcmp(s->params[i].name, scalar(key)))
                    return node_error(c, key, "'%s' is both a fixed parameter and an axis", scalar(key));
            if ((status = parse_axis(c, key, node_at(c, pair->value), &s->axes[s->n_axes++]))) return status;
        }
    }
    if (skip) {
        if (skip->type != YAML_SEQUENCE_NODE) return node_error(c, skip, "'skip' must be a list of {parameter: value} rules");
        int n = (int)(skip->data.sequence.items.top - skip->data.sequence.items.start);
        s->skip = calloc((size_t)(n ? n : 1), sizeof *s->skip);
        for (yaml_node_item_t *item = skip->data.sequence.items.start; item < skip->data.sequence.items.top; item++) {
            tm_suite_rule *rule = &s->skip[s->n_skip++];
            if ((status = parse_params(c, node_at(c, *item), s->kind, "skip rule", &rule->params, &rule->n_params))) return status;
        }
    }
    return TM_OK;
}

tm_status tm_suite_load(const char *path, tm_suite **out, tm_error_t *error) {
    *out = NULL;
    FILE *file = fopen(path, "rb");
    if (!file) return tm_error_set(error, TM_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    yaml_parser_t parser;
    yaml_document_t document;
    yaml_parser_initialize(&parser);
    yaml_parser_set_input_file(&parser, file);
    tm_status status = TM_OK;
    if (!yaml_parser_load(&parser, &document)) {
        status = tm_error_set(error, TM_ERR_FORMAT, "%s:%lu:%lu: YAML error: %s%s%s", path,
                              (unsigned long)parser.problem_mark.line + 1, (unsigned long)parser.problem_mark.column + 1,
                              parser.problem ? parser.problem : "unknown", parser.context ? " " : "",
                              parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        fclose(file);
        return status;
    }
    tm_suite *s = calloc(1, sizeof *s);
    s->path = strdup(path);
    s->min_repetitions = 3;
    s->min_seconds = 0.0;
    s->max_relative_noise = 0.05;
    s->timeout_seconds = 300;
    s->warmup = 1;
    parse_context context = {path, &document, error};
    status = parse_suite(&context, yaml_document_get_root_node(&document), s);
    yaml_document_delete(&document);
    yaml_parser_delete(&parser);
    fclose(file);
    if (status) {
        tm_suite_free(s);
        return status;
    }
    *out = s;
    return TM_OK;
}

/* ---- expansion ---------------------------------------------------------------------------- */

static void free_case(tm_suite_case *c) {
    for (int k = 0; k < c->n_params; k++) free(c->params[k].name), free(c->params[k].value);
    free(c->params);
    free(c->name);
    memset(c, 0, sizeof *c);
}

void tm_suite_cases_free(tm_suite_case *cases, int n_cases) {
    for (int i = 0; cases && i < n_cases; i++) free_case(&cases[i]);
    free(cases);
}

const char *tm_case_param(const tm_suite_case *c, const char *name, const char *fallback) {
    for (int i = 0; i < c->n_params; i++)
        if (!strcmp(c->params[i].name, name)) return c->params[i].value;
    return fallback;
}

static bool matches_rule(const tm_suite_case *c, const tm_suite_rule *rule) {
    for (int i = 0; i < rule->n_params; i++) {
        const char *value = tm_case_param(c, rule->params[i].name, NULL);
        if (!value || strcmp(value, rule->params[i].value)) return false;
    }
    return true;
}

tm_status tm_suite_expand(const tm_suite *s, tm_suite_case **out, int *n_out, tm_error_t *error) {
    long long total = 1;
    for (int a = 0; a < s->n_axes; a++) {
        total *= s->axes[a].n_values;
        if (total > 100000) return tm_error_set(error, TM_ERR_INVALID_ARG, "%s: more than 100000 cases", s->path);
    }
    tm_suite_case *cases = calloc((size_t)total, sizeof *cases);
    int n = 0;
    if (!cases) return tm_error_set(error, TM_ERR_NO_MEMORY, "out of memory expanding %s", s->path);
    for (long long index = 0; index < total; index++) {
        tm_suite_case *c = &cases[n];
        c->params = calloc((size_t)(s->n_params + s->n_axes + 1), sizeof *c->params);
        for (int i = 0; i < s->n_params; i++) {
            c->params[c->n_params].name = strdup(s->params[i].name);
            c->params[c->n_params++].value = strdup(s->params[i].value);
        }
        char name[1024];
        int length = snprintf(name, sizeof name, "%s/", s->name);
        long long rest = index;
        int chosen[64];
        for (int a = s->n_axes - 1; a >= 0; a--) { /* last axis varies fastest */
            chosen[a] = (int)(rest % s->axes[a].n_values);
            rest /= s->axes[a].n_values;
        }
        for (int a = 0; a < s->n_axes && a < 64; a++) {
            c->params[c->n_params].name = strdup(s->axes[a].name);
            c->params[c->n_params++].value = strdup(s->axes[a].values[chosen[a]]);
            length += snprintf(name + length, sizeof name - (size_t)TM_MIN((size_t)length, sizeof name), "%s%s=%s",
                               a ? "," : "", s->axes[a].name, s->axes[a].values[chosen[a]]);
            if ((size_t)length >= sizeof name) length = (int)sizeof name - 1;
        }
        c->name = strdup(name);
        bool skipped = false;
        for (int r = 0; r < s->n_skip && !skipped; r++) skipped = matches_rule(c, &s->skip[r]);
        if (skipped) free_case(c);
        else n++;
    }
    *out = cases;
    *n_out = n;
    return TM_OK;
}

char *tm_case_params_json(const tm_suite_case *c) {
    size_t size = 16;
    for (int i = 0; i < c->n_params; i++) size += strlen(c->params[i].name) * 2 + strlen(c->params[i].value) * 6 + 8;
    char *json = malloc(size);
    if (!json) return NULL;
    size_t n = 0;
    json[n++] = '{';
    for (int i = 0; i < c->n_params; i++) {
        n += (size_t)snprintf(json + n, size - n, "%s\"%s\": ", i ? ", " : "", c->params[i].name);
        const char *v = c->params[i].value;
        char *end;
        strtod(v, &end);
        if (*v && !*end && strcmp(v, "nan") && strcmp(v, "inf")) {
            n += (size_t)snprintf(json + n, size - n, "%s", v);
        } else {
            json[n++] = '"';
            for (; *v; v++) {
                if (*v == '"' || *v == '\\') n += (size_t)snprintf(json + n, size - n, "\\%c", *v);
                else if ((unsigned char)*v < 0x20) n += (size_t)snprintf(json + n, size - n, "\\u%04x", *v);
                else json[n++] = *v;
            }
            json[n++] = '"';
        }
    }
    json[n++] = '}';
    json[n] = 0;
    return json;
}

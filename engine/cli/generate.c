/*
 * generate.c - `tensormesh generate`: run one prompt through the engine and stream the text.
 * Ends with prompt and decode throughput (stderr), so a user can see how fast their model runs.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void usage(FILE *out) {
    fprintf(out,
            "usage: tensormesh generate -m MODEL.gguf -p PROMPT [options]\n"
            "       tensormesh generate --synthetic PRESET:TYPE -p PROMPT [options]\n\n"
            "Streams the model's continuation of PROMPT, then prints tokens/s for the prompt and the decode.\n"
            "  -m, --model FILE       a llama-architecture GGUF (Llama 2/3, SmolLM2, ...)\n"
            "  --synthetic P:T        a synthetic model built in memory (see `tensormesh synth --list`)\n"
            "  -p, --prompt TEXT      the prompt (special-token text such as <|im_start|> is recognised)\n"
            "  -f, --file FILE        read the prompt from FILE\n"
            "  -n, --max-tokens N     tokens to generate at most (default 128)\n"
            "  --chat                 wrap the prompt in the model's chat template (chatml, llama3, llama2)\n"
            "  --system TEXT          system message for --chat\n"
            "  --temp T               temperature; 0 = greedy (default 0)\n"
            "  --top-k K              keep the K most likely tokens (default 0: off)\n"
            "  --top-p P              nucleus sampling (default 1: off)\n"
            "  --min-p P              drop tokens below P x the best one's probability (default 0: off)\n"
            "  --repeat-penalty R     penalise tokens seen in the last 64 (default 1: off)\n"
            "  --seed N               sampling seed (default 0)\n"
            "  --stop TEXT            stop before TEXT (repeatable)\n"
            "  --ignore-eos           keep going past end-of-generation tokens\n"
            "  -t, --threads N        CPU threads (default: all)\n"
            "  -c, --ctx N            context length (default: the model's, at most 4096)\n"
            "  --kv-type f16|f32|q8   KV cache precision (default f16; q8: 8-bit values and a scale a\n"
            "                         head vector, about half the f16 bytes; CPU and GPU)\n"
            "  --exact                float activations against quantized weights (slow, the reference)\n"
            "  --device D             auto (default: the GPU when CUDA finds one), cpu, cuda or cuda:N\n"
            "  --host-sampling        sample in the engine from logits copied back (default: in the backend,\n"
            "                         on the GPU for any settings; the same tokens)\n"
            "  --no-step-overlap      read each step's tokens before launching the next (default: a decode\n"
            "                         step is launched before the one before it is read; the same tokens)\n"
            "  --no-cuda-graphs       CUDA: launch decode steps kernel by kernel instead of replaying graphs\n"
            "  --nvtx-detail          NVTX ranges per layer and operation too, for Nsight (CUDA: no graphs then)\n"
            "  -v, --verbose          print the device memory in use at the end\n");
}

static char *read_text_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = size >= 0 ? malloc((size_t)size + 1) : NULL;
    if (text && fread(text, 1, (size_t)size, f) != (size_t)size) {
        free(text);
        text = NULL;
    }
    if (text) text[size] = 0;
    fclose(f);
    return text;
}

static bool parse_float(const char *flag, const char *text, float min, float max, float *out) {
    char *end;
    float value = strtof(text, &end);
    if (end == text || *end || !(value >= min && value <= max)) {
        fprintf(stderr, "tensormesh generate: %s: '%s' is not a number in [%g, %g]\n", flag, text, min, max);
        return false;
    }
    *out = value;
    return true;
}

int tm_cli_generate(int argc, char **argv) {
    tm_engine_options options;
    tm_engine_options_default(&options);
    tm_request_params request;
    tm_request_params_default(&request);
    const char *prompt = NULL, *prompt_file = NULL, *system = NULL, *stops[16];
    bool chat = false, verbose = false;
    long long value;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        }
        bool flag_only = !strcmp(a, "--chat") || !strcmp(a, "--ignore-eos") || !strcmp(a, "--exact") ||
                         !strcmp(a, "--host-sampling") || !strcmp(a, "--no-cuda-graphs") || !strcmp(a, "-v") ||
                         !strcmp(a, "--verbose") || !strcmp(a, "--nvtx-detail") || !strcmp(a, "--no-step-overlap");
        if (!flag_only && !(v = tm_cli_flag_value(argc, argv, &i))) return 2;
        if (!strcmp(a, "--chat")) chat = true;
        else if (!strcmp(a, "--ignore-eos")) request.ignore_eos = true;
        else if (!strcmp(a, "--exact")) options.precision = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) options.model_path = v;
        else if (!strcmp(a, "--synthetic")) options.synthetic = v;
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "-f") || !strcmp(a, "--file")) prompt_file = v;
        else if (!strcmp(a, "--system")) system = v;
        else if (!strcmp(a, "--device")) options.device = v;
        else if (!strcmp(a, "-n") || !strcmp(a, "--max-tokens")) {
            if (!tm_cli_parse_int("generate", a, v, 0, 1 << 20, &value)) return 2;
            request.max_tokens = (int)value;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!tm_cli_parse_int("generate", a, v, 1, 1024, &value)) return 2;
            options.n_threads = (int)value;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!tm_cli_parse_int("generate", a, v, 16, 1 << 20, &value)) return 2;
            options.n_ctx = (int)value;
        } else if (!strcmp(a, "--top-k")) {
            if (!tm_cli_parse_int("generate", a, v, 0, 1 << 24, &value)) return 2;
            request.sampling.top_k = (int)value;
        } else if (!strcmp(a, "--seed")) {
            if (!tm_cli_parse_int("generate", a, v, 0, INT64_MAX, &value)) return 2;
            request.sampling.seed = (uint64_t)value;
        } else if (!strcmp(a, "--temp")) {
            if (!parse_float(a, v, 0, 100, &request.sampling.temperature)) return 2;
        } else if (!strcmp(a, "--top-p")) {
            if (!parse_float(a, v, 0, 1, &request.sampling.top_p)) return 2;
        } else if (!strcmp(a, "--min-p")) {
            if (!parse_float(a, v, 0, 1, &request.sampling.min_p)) return 2;
        } else if (!strcmp(a, "--repeat-penalty")) {
            if (!parse_float(a, v, 0.01f, 100, &request.sampling.repetition_penalty)) return 2;
        } else if (!strcmp(a, "--stop")) {
            if (request.n_stop == 16) {
                fprintf(stderr, "tensormesh generate: at most 16 --stop strings\n");
                return 2;
            }
            stops[request.n_stop++] = v;
        } else if (!strcmp(a, "--host-sampling")) {
            options.host_sampling = true;
        } else if (!strcmp(a, "--no-step-overlap")) {
            options.no_step_overlap = true;
        } else if (!strcmp(a, "--no-cuda-graphs")) {
            options.no_cuda_graphs = true;
        } else if (!strcmp(a, "-v") || !strcmp(a, "--verbose")) {
            verbose = true;
        } else if (!strcmp(a, "--nvtx-detail")) {
            options.nvtx_detail = true;
        } else if (!strcmp(a, "--kv-type")) {
            if ((options.kv_type = tm_kv_type_from_name(v)) < 0) {
                fprintf(stderr, "tensormesh generate: --kv-type: '%s' is not f16, f32 or q8\n", v);
                return 2;
            }
        } else {
            fprintf(stderr, "tensormesh generate: unknown option '%s'\n\n", a);
            usage(stderr);
            return 2;
        }
    }
    request.stop = stops;
    if ((!options.model_path && !options.synthetic) || (!prompt && !prompt_file)) {
        fprintf(stderr, "tensormesh generate: %s is required\n\n",
                !options.model_path && !options.synthetic ? "-m MODEL (or --synthetic)" : "-p PROMPT (or -f FILE)");
        usage(stderr);
        return 2;
    }
    char *file_text = NULL, *chat_text = NULL;
    if (prompt_file && !(prompt = file_text = read_text_file(prompt_file))) {
        fprintf(stderr, "tensormesh generate: cannot read %s\n", prompt_file);
        return 1;
    }
    tm_error_t error = {0};
    tm_engine *engine;
    if (tm_engine_create(&options, &engine, &error)) {
        fprintf(stderr, "tensormesh generate: %s\n", error.message);
        free(file_text);
        return 1;
    }
    int status = 0, id = -1;
    if (chat) {
        if (tm_engine_chat_prompt(engine, system, prompt, &chat_text, &error)) goto failed;
        prompt = chat_text;
    }
    request.prompt = prompt;
    if (tm_engine_submit(engine, &request, &id, &error)) goto failed;
    size_t shown = 0;
    while (tm_engine_busy(engine)) {
        if (tm_engine_step(engine, &error)) goto failed;
        const char *text;
        size_t length;
        tm_engine_request_text(engine, id, &text, &length);
        if (length > shown) {
            fwrite(text + shown, 1, length - shown, stdout);
            fflush(stdout);
            shown = length;
        }
    }
    tm_request_info info;
    tm_engine_request_info(engine, id, &info);
    tm_engine_stats stats;
    tm_engine_get_stats(engine, &stats);
    static const char *const reasons[] = {"", "max tokens", "end of generation", "stop string", "context full", "cancelled"};
    double decode_tokens = info.n_generated > 1 ? info.n_generated - 1 : 0;
    fprintf(stderr, "\n\n[%s] prompt %d tokens in %.3f s (%.1f tokens/s), decode %d tokens in %.3f s (%.2f tokens/s), "
                    "stopped: %s\n",
            tm_engine_model_name(engine), info.n_prompt_tokens, stats.prefill_seconds,
            stats.prefill_seconds > 0 ? info.n_prompt_tokens / stats.prefill_seconds : 0.0, info.n_generated,
            stats.decode_seconds, stats.decode_seconds > 0 ? decode_tokens / stats.decode_seconds : 0.0,
            reasons[info.finish_reason]);
    if (verbose)
        fprintf(stderr, "[%s] device memory: weights %.1f MiB, KV %.1f MiB, activations %.1f MiB, workspace %.1f MiB; "
                        "%lld tokens sampled on the device\n",
                options.device, stats.device_weight_bytes / 1048576.0, stats.device_kv_bytes / 1048576.0,
                stats.device_activation_bytes / 1048576.0, stats.device_workspace_bytes / 1048576.0,
                (long long)stats.device_sampled_tokens);
    goto done;
failed:
    fprintf(stderr, "\ntensormesh generate: %s\n", error.message);
    status = 1;
done:
    tm_engine_free(engine);
    free(file_text);
    free(chat_text);
    return status;
}

/*
 * test_launch_log.c: the record behind fkda_last_kernels() (src/core/launch_log.c, plain C,
 * compiled into this test) and the public call on the CPU:
 *   1. kernel identifiers from the runtime's mangled names: plain and internal-linkage functions,
 *      names with digits, and names that are not of that form (copied whole), into short buffers;
 *   2. the list: cleared by a run call, entries in launch order with their cluster sizes, and a
 *      count past FKDA_LAUNCH_LOG_MAX;
 *   3. fkda_last_kernels() is "" before any run call and after a CPU run (nothing launched).
 * The GPU tests check the names the launches record (tests/cuda: the forced kernels' names).
 */
#include <stdlib.h>
#include <string.h>

#include "../../src/core/launch_log.h"
#include "test_util.h"

static void check_identifier(const char *runtime_name, size_t size, const char *want)
{
    char out[64];
    memset(out, 'x', sizeof out);
    fkda_kernel_identifier(runtime_name, out, size);
    CHECK(strcmp(out, want) == 0, "identifier of \"%s\" in %zu bytes: \"%s\", expected \"%s\"", runtime_name, size, out,
          want);
}

static void test_identifiers(void)
{
    check_identifier("_Z12layer_f32_kv18fused_layer_params", 64, "layer_f32_kv");
    check_identifier("_Z20layer_f32_kv_w4_io1618fused_layer_params", 64, "layer_f32_kv_w4_io16");
    check_identifier("_ZL12pf_prep_bulk9pf_params", 64, "pf_prep_bulk");
    check_identifier("_Z15pf_merge_kernelPK9pf_paramsPK13pf_chain_plan", 64, "pf_merge_kernel");
    /* Not of the simple form: a name in a namespace, a C name, a length past the end. */
    check_identifier("_ZN47_INTERNAL_56a7_16_decode_cu5stepsEv", 64, "_ZN47_INTERNAL_56a7_16_decode_cu5stepsEv");
    check_identifier("decode_kernel", 64, "decode_kernel");
    check_identifier("_Z99short", 64, "_Z99short");
    check_identifier("_Z", 64, "_Z");
    /* Truncated to the buffer, always terminated. */
    check_identifier("_Z12layer_f32_kv18fused_layer_params", 6, "layer");
    check_identifier("decode_kernel", 1, "");
}

static void test_list(void)
{
    static const char a = 0, b = 0;
    int recorded = -1, total = -1;
    fkda_launch_log_note(&a, 1);
    fkda_launch_log_clear();
    fkda_launch_log_entries(&recorded, &total);
    CHECK(recorded == 0 && total == 0, "after clear: %d recorded, %d in all", recorded, total);

    fkda_launch_log_note(&a, 1);
    fkda_launch_log_note(&b, 4);
    const fkda_launch_entry *e = fkda_launch_log_entries(&recorded, &total);
    CHECK(recorded == 2 && total == 2, "two launches: %d recorded, %d in all", recorded, total);
    CHECK(e[0].kernel == &a && e[0].cluster == 1 && e[1].kernel == &b && e[1].cluster == 4,
          "two launches: entries out of order or with the wrong cluster sizes");

    for (int i = 2; i < FKDA_LAUNCH_LOG_MAX + 3; i++) fkda_launch_log_note(&a, 2);
    e = fkda_launch_log_entries(&recorded, &total);
    CHECK(recorded == FKDA_LAUNCH_LOG_MAX && total == FKDA_LAUNCH_LOG_MAX + 3, "past the end: %d recorded, %d in all",
          recorded, total);
    CHECK(e[1].kernel == &b && e[FKDA_LAUNCH_LOG_MAX - 1].cluster == 2, "past the end: the first entries changed");
    fkda_launch_log_clear();
}

/* A valid one-token prefill on the CPU: nothing is launched, so the report stays empty. */
static void test_public_call_on_cpu(void)
{
    CHECK(strcmp(fkda_last_kernels(), "") == 0, "before any call: \"%s\"", fkda_last_kernels());
    enum { T = 1, H = 1, K = 8, V = 8 };
    test_tensor q = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){1, T, H, K});
    test_tensor k = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){1, T, H, K});
    test_tensor v = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){1, T, H, V});
    test_tensor g = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){1, T, H, K});
    test_tensor beta = test_tensor_alloc(FKDA_DTYPE_F32, 3, (int64_t[]){1, T, H});
    test_tensor out = test_tensor_alloc(FKDA_DTYPE_F32, 4, (int64_t[]){1, T, H, V});
    test_tensor_fill_value(&q, 0.5);
    test_tensor_fill_value(&k, 0.25);
    test_tensor_fill_value(&v, 1.0);
    test_tensor_fill_value(&g, -0.1);
    test_tensor_fill_value(&beta, 0.5);
    fkda_prefill_args args;
    memset(&args, 0, sizeof args);
    args.q = q.t;
    args.k = k.t;
    args.v = v.t;
    args.g = g.t;
    args.beta = beta.t;
    args.out = out.t;
    args.options = fkda_default_options();
    const fkda_device cpu = {FKDA_DEVICE_CPU, 0, NULL, 1, 0};
    size_t bytes = 0;
    fkda_status s = fkda_prefill_workspace_size(&args, &cpu, &bytes);
    CHECK(s == FKDA_OK, "workspace query: %s (%s)", fkda_status_name(s), fkda_last_error());
    void *ws = bytes ? aligned_alloc(256, (bytes + 255) / 256 * 256) : NULL;
    s = fkda_prefill(&args, &cpu, ws, bytes);
    CHECK(s == FKDA_OK, "prefill on the CPU: %s (%s)", fkda_status_name(s), fkda_last_error());
    CHECK(strcmp(fkda_last_kernels(), "") == 0, "after a CPU prefill: \"%s\"", fkda_last_kernels());
    free(ws);
    test_tensor *all[] = {&q, &k, &v, &g, &beta, &out};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) test_tensor_free(all[i]);
}

int main(void)
{
    test_identifiers();
    test_list();
    test_public_call_on_cpu();
    return test_exit("test_launch_log");
}

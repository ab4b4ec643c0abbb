/* token_inputs.c: validation shared by prefill and decode; see token_inputs.h. */
#include "token_inputs.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "../core/error.h"
#include "validate.h"

#define FKDA_MAX_HEAD_DIM 256
/* scale and lower_bound are used in float32: a larger magnitude would turn into an infinity there
 * (and a chunk's sum of 16 gates must stay finite too). */
#define FKDA_MAX_OPTION_MAGNITUDE 1e30

fkda_status fkda_validate_device(const fkda_device *device)
{
    if (device == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "device: is NULL");
    if (device->type != FKDA_DEVICE_CPU && device->type != FKDA_DEVICE_CUDA)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "device.type: %d is neither FKDA_DEVICE_CPU nor FKDA_DEVICE_CUDA",
                         (int)device->type);
    if (device->num_threads < 0 || device->num_threads > 4096)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "device.num_threads: %d; expected 0 (all cores) to 4096",
                         (int)device->num_threads);
    if (device->reference && device->type != FKDA_DEVICE_CPU)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "device.reference: the float64 reference runs on the CPU device only");
    if (device->type == FKDA_DEVICE_CUDA && device->index < 0)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "device.index: %d is negative", (int)device->index);
    return FKDA_OK;
}

static fkda_status validate_options(const fkda_options *o, fkda_problem *p)
{
    if (!(fabs(o->scale) <= FKDA_MAX_OPTION_MAGNITUDE))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "options.scale: must be finite and at most %g in "
                         "magnitude, got %g (0 selects K^-0.5)",
                         FKDA_MAX_OPTION_MAGNITUDE, o->scale);
    p->scale = o->scale == 0.0 ? (float)(1.0 / sqrt((double)p->K)) : (float)o->scale;
    if (o->gate != FKDA_GATE_NONE && o->gate != FKDA_GATE_LOWER_BOUND && o->gate != FKDA_GATE_SOFTPLUS)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "options.gate: %d is not an fkda_gate value", (int)o->gate);
    p->gate = o->gate;
    p->lower_bound = 0.0f;
    if (o->gate == FKDA_GATE_LOWER_BOUND) {
        if (!(o->lower_bound < 0.0) || !(o->lower_bound >= -FKDA_MAX_OPTION_MAGNITUDE))
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "options.lower_bound: %g is out of range; the lower-bound gate needs a value in "
                             "[-%g, 0) (the safe gate uses [-5, 0))",
                             o->lower_bound, FKDA_MAX_OPTION_MAGNITUDE);
        p->lower_bound = (float)o->lower_bound;
    }
    if (o->allow_neg_eigval && !o->use_beta_sigmoid)
        return fkda_fail(
            FKDA_ERROR_INVALID_ARGUMENT,
            "options.allow_neg_eigval: needs options.use_beta_sigmoid (it scales sigmoid(beta) to [0, 2))");
    p->use_qk_l2norm = o->use_qk_l2norm != 0;
    p->use_beta_sigmoid = o->use_beta_sigmoid != 0;
    p->allow_neg_eigval = o->allow_neg_eigval != 0;
    p->state_v_first = o->state_v_first != 0;
    return FKDA_OK;
}

/* cu_seqlens on the CPU: 0 = c_0 <= c_1 <= ... <= c_N = T. */
static fkda_status check_cu_seqlens_contents(const fkda_problem *p)
{
    int64_t prev = 0;
    for (int64_t n = 0; n <= p->N; n++) {
        int64_t c = fkda_read_index(&p->cu_seqlens, n * p->cu_seqlens.stride[0]);
        if (n == 0 && c != 0)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "cu_seqlens: must start at 0, got cu_seqlens[0] = %lld",
                             (long long)c);
        if (c < prev)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "cu_seqlens: must not decrease, got cu_seqlens[%lld] = %lld after %lld", (long long)n,
                             (long long)c, (long long)prev);
        prev = c;
    }
    if (prev != p->T)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "cu_seqlens: must end at T = %lld (the tokens of q), got cu_seqlens[%lld] = %lld",
                         (long long)p->T, (long long)p->N, (long long)prev);
    return FKDA_OK;
}

fkda_status fkda_validate_token_inputs(const fkda_token_inputs *in, const fkda_device *device, fkda_op_kind op,
                                       fkda_problem *p)
{
    memset(p, 0, sizeof *p);
    p->op = op;
    p->device = *device;
    if (in->options == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "options: is NULL");

    /* q fixes B, T, H, K and the input dtype; everything else is checked against it. */
    TRY(fkda_check_layout(in->q, "q"));
    TRY(fkda_check_dtype(in->q, "q", FKDA_FLOAT_DTYPES, "float32, float16 or bfloat16"));
    if (in->q->ndim != 4) return fkda_check_shape(in->q, "q", "[B, T, H, K]", 4, (const int64_t[]){-1, -1, -1, -1});
    p->B = in->q->shape[0];
    p->T = in->q->shape[1];
    p->H = in->q->shape[2];
    p->K = in->q->shape[3];
    if (p->H < 1) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "q: H (dimension 2) must be at least 1");
    if (p->K < 1 || p->K > FKDA_MAX_HEAD_DIM)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "q: K = %lld; the key head dim must be 1 to %d", (long long)p->K,
                         FKDA_MAX_HEAD_DIM);

    TRY(fkda_check_layout(in->k, "k"));
    TRY(fkda_check_shape(in->k, "k", "[B, T, H, K] (as q)", 4, (const int64_t[]){p->B, p->T, p->H, p->K}));
    if (in->k->dtype != in->q->dtype)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "k: dtype %s differs from q's %s", fkda_dtype_name(in->k->dtype),
                         fkda_dtype_name(in->q->dtype));

    TRY(fkda_check_layout(in->v, "v"));
    if (in->v->ndim != 4) return fkda_check_shape(in->v, "v", "[B, T, HV, V]", 4, (const int64_t[]){-1, -1, -1, -1});
    p->HV = in->v->shape[2];
    p->V = in->v->shape[3];
    TRY(fkda_check_shape(in->v, "v", "[B, T, HV, V] (B and T of q)", 4, (const int64_t[]){p->B, p->T, -1, -1}));
    if (in->v->dtype != in->q->dtype)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "v: dtype %s differs from q's %s", fkda_dtype_name(in->v->dtype),
                         fkda_dtype_name(in->q->dtype));
    if (p->HV < 1 || p->HV % p->H != 0)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "v: HV = %lld value heads must be a positive multiple of H = %lld qk heads", (long long)p->HV,
                         (long long)p->H);
    if (p->V < 1 || p->V > FKDA_MAX_HEAD_DIM)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "v: V = %lld; the value head dim must be 1 to %d",
                         (long long)p->V, FKDA_MAX_HEAD_DIM);
    p->group = p->HV / p->H;

    TRY(fkda_check_layout(in->g, "g"));
    TRY(fkda_check_shape(in->g, "g", "[B, T, HV, K]", 4, (const int64_t[]){p->B, p->T, p->HV, p->K}));
    TRY(fkda_check_dtype(in->g, "g", FKDA_FLOAT_DTYPES, "float32, float16 or bfloat16"));

    TRY(fkda_check_layout(in->beta, "beta"));
    TRY(fkda_check_shape(in->beta, "beta", "[B, T, HV]", 3, (const int64_t[]){p->B, p->T, p->HV}));
    TRY(fkda_check_dtype(in->beta, "beta", FKDA_FLOAT_DTYPES, "float32, float16 or bfloat16"));

    TRY(fkda_check_layout(in->out, "out"));
    TRY(fkda_check_shape(in->out, "out", "[B, T, HV, V]", 4, (const int64_t[]){p->B, p->T, p->HV, p->V}));
    if (in->out->dtype != in->v->dtype)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "out: dtype %s differs from v's %s (the output has the input dtype)",
                         fkda_dtype_name(in->out->dtype), fkda_dtype_name(in->v->dtype));
    TRY(fkda_check_writable(in->out, "out"));

    TRY(validate_options(in->options, p));

    /* Gate parameters: only read by the gates that use them. */
    int gate_in_kernel = p->gate != FKDA_GATE_NONE;
    if (gate_in_kernel && fkda_tensor_present(in->A_log)) {
        TRY(fkda_check_layout(in->A_log, "A_log"));
        TRY(fkda_check_shape(in->A_log, "A_log", "[HV]", 1, (const int64_t[]){p->HV}));
        TRY(fkda_check_dtype(in->A_log, "A_log", FKDA_FLOAT_DTYPES, "float32, float16 or bfloat16"));
        fkda_to_operand(in->A_log, NULL, &p->A_log);
    }
    if (p->gate == FKDA_GATE_SOFTPLUS && p->A_log.data == NULL)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "A_log: is required by the softplus gate (a = -exp(A_log) * softplus(g + dt_bias))");
    if (gate_in_kernel && fkda_tensor_present(in->dt_bias)) {
        const fkda_tensor *d = in->dt_bias;
        TRY(fkda_check_layout(d, "dt_bias"));
        TRY(fkda_check_dtype(d, "dt_bias", FKDA_FLOAT_DTYPES, "float32, float16 or bfloat16"));
        if (!((d->ndim == 1 && d->shape[0] == p->HV * p->K) ||
              (d->ndim == 2 && d->shape[0] == p->HV && d->shape[1] == p->K))) {
            char got[128];
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "dt_bias: expected shape [HV, K] = [%lld, %lld] or [HV * K] = [%lld], got %s",
                             (long long)p->HV, (long long)p->K, (long long)(p->HV * p->K),
                             fkda_format_shape(got, sizeof got, d->ndim, d->shape));
        }
        if (d->ndim == 1) {
            p->dt_bias.data = d->data; /* flat: row h starts at h * K */
            p->dt_bias.dtype = d->dtype;
            p->dt_bias.stride[0] = p->K;
            p->dt_bias.stride[1] = 1;
        } else {
            fkda_to_operand(d, NULL, &p->dt_bias);
        }
    }

    /* Sequences. */
    p->N = p->B;
    if (fkda_tensor_present(in->cu_seqlens)) {
        const fkda_tensor *c = in->cu_seqlens;
        TRY(fkda_check_layout(c, "cu_seqlens"));
        TRY(fkda_check_dtype(c, "cu_seqlens", FKDA_INDEX_DTYPES, "int64 or int32"));
        if (c->ndim != 1 || c->shape[0] < 2)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "cu_seqlens: expected 1 dimension [N + 1] with N >= 1 sequences, got %d dimensions "
                             "and %lld entries",
                             (int)c->ndim, (long long)c->shape[0]);
        if (p->B != 1)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "cu_seqlens: needs a packed batch of B = 1 row, but q has B = %lld rows", (long long)p->B);
        p->N = c->shape[0] - 1;
        fkda_to_operand(c, NULL, &p->cu_seqlens);
        if (device->type == FKDA_DEVICE_CPU) TRY(check_cu_seqlens_contents(p));
    }

    TRY(fkda_check_disjoint_from_tokens(in->out, "out", in, p));

    fkda_to_operand(in->q, NULL, &p->q);
    fkda_to_operand(in->k, NULL, &p->k);
    fkda_to_operand(in->v, NULL, &p->v);
    fkda_to_operand(in->g, NULL, &p->g);
    fkda_to_operand(in->beta, NULL, &p->beta);
    fkda_to_operand(in->out, NULL, &p->out);
    return FKDA_OK;
}

fkda_status fkda_validate_state_rows(const fkda_tensor *t, const char *name, const fkda_problem *p, int64_t rows,
                                     const char *rows_name, unsigned dtypes, const char *dtypes_what, int is_output,
                                     fkda_operand *op, int64_t *rows_out)
{
    static const int kv_order[4] = {0, 1, 2, 3}; /* memory [n, h, K, V] */
    static const int vk_order[4] = {0, 1, 3, 2}; /* memory [n, h, V, K]: swap to [n, h, K, V] */
    TRY(fkda_check_layout(t, name));
    TRY(fkda_check_dtype(t, name, dtypes, dtypes_what));
    int64_t d2 = p->state_v_first ? p->V : p->K, d3 = p->state_v_first ? p->K : p->V;
    char dims[96];
    snprintf(dims, sizeof dims, p->state_v_first ? "[%s, HV, V, K] (state_v_first)" : "[%s, HV, K, V]", rows_name);
    TRY(fkda_check_shape(t, name, dims, 4, (const int64_t[]){rows, p->HV, d2, d3}));
    if (is_output) TRY(fkda_check_writable(t, name));
    fkda_to_operand(t, p->state_v_first ? vk_order : kv_order, op);
    if (rows_out) *rows_out = t->shape[0];
    return FKDA_OK;
}

fkda_status fkda_validate_state(const fkda_tensor *t, const char *name, const fkda_problem *p, int64_t slots,
                                int is_output, fkda_operand *op, int64_t *slots_out)
{
    /* slots < 0: a pool of any number of slots (decode); else one state per sequence. */
    return fkda_validate_state_rows(t, name, p, slots, slots < 0 ? "num_slots" : "N", FKDA_STATE_DTYPES,
                                    "float32 or bfloat16", is_output, op, slots_out);
}

fkda_status fkda_check_disjoint_from_tokens(const fkda_tensor *t, const char *name, const fkda_token_inputs *in,
                                            const fkda_problem *p)
{
    /* A_log and dt_bias are not read, and not validated, without a gate in the kernel. */
    const fkda_tensor none = {0};
    const int gated = p->gate != FKDA_GATE_NONE;
    const struct {
        const fkda_tensor *t;
        const char *name;
    } inputs[] = {
        {in->q, "q"},
        {in->k, "k"},
        {in->v, "v"},
        {in->g, "g"},
        {in->beta, "beta"},
        {gated ? in->A_log : &none, "A_log"},
        {gated ? in->dt_bias : &none, "dt_bias"},
        {in->cu_seqlens, "cu_seqlens"},
        {t == in->out ? &none : in->out, "out"},
    };
    for (size_t i = 0; i < sizeof inputs / sizeof inputs[0]; i++)
        TRY(fkda_check_disjoint(t, name, inputs[i].t, inputs[i].name));
    return FKDA_OK;
}

/* decode.c: the public decode entry points: validate everything, then dispatch. */
#include <string.h>

#include "decode_validate.h"
#include "dispatch.h"
#include "../core/error.h"
#include "../core/launch_log.h"
#include "token_inputs.h"
#include "validate.h"

/* On the CPU the index tensors are readable: every slot must be inside the pool, every
 * accepted-token count in 1..T_max, every sequence no longer than T_max with 2-D indices. */
static fkda_status check_index_contents(const fkda_problem *p)
{
    const fkda_operand *idx = &p->state_indices;
    int64_t per_seq = p->indices_per_token ? p->indices_tokens : 1;
    for (int64_t n = 0; n < p->N; n++) {
        for (int64_t t = 0; t < per_seq; t++) {
            int64_t slot = fkda_read_index(idx, n * idx->stride[0] + t * idx->stride[1]);
            if (slot >= p->pool_size)
                return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                                 "state_indices: entry [%lld, %lld] = %lld is outside the pool of %lld slots",
                                 (long long)n, (long long)t, (long long)slot, (long long)p->pool_size);
        }
        if (p->num_accepted_tokens.data) {
            int64_t a = fkda_read_index(&p->num_accepted_tokens, n * p->num_accepted_tokens.stride[0]);
            if (a < 1 || a > p->indices_tokens)
                return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                                 "num_accepted_tokens: entry [%lld] = %lld; expected 1 to %lld (the columns of "
                                 "state_indices)",
                                 (long long)n, (long long)a, (long long)p->indices_tokens);
        }
        if (p->indices_per_token) {
            int64_t row, start, length;
            fkda_sequence_bounds(p, n, &row, &start, &length);
            if (length > p->indices_tokens)
                return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                                 "state_indices: sequence %lld has %lld tokens, but 2-D state_indices has only "
                                 "%lld columns (one slot per token)",
                                 (long long)n, (long long)length, (long long)p->indices_tokens);
        }
    }
    return FKDA_OK;
}

fkda_status fkda_validate_decode(const fkda_decode_args *a, const fkda_device *device, fkda_problem *p)
{
    if (a == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "args: is NULL");
    TRY(fkda_validate_device(device));
    fkda_token_inputs in = {&a->q,     &a->k,       &a->v,          &a->g,   &a->beta,
                            &a->A_log, &a->dt_bias, &a->cu_seqlens, &a->out, &a->options};
    TRY(fkda_validate_token_inputs(&in, device, FKDA_OP_DECODE, p));

    if (!fkda_tensor_present(&a->state_pool))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "state_pool: is required (the states decode updates in place)");
    TRY(fkda_validate_state(&a->state_pool, "state_pool", p, -1, 1, &p->state_in, &p->pool_size));
    p->state_out = p->state_in;

    if (fkda_tensor_present(&a->state_indices)) {
        const fkda_tensor *s = &a->state_indices;
        TRY(fkda_check_layout(s, "state_indices"));
        TRY(fkda_check_dtype(s, "state_indices", FKDA_INDEX_DTYPES, "int64 or int32"));
        if (s->ndim == 1) {
            TRY(fkda_check_shape(s, "state_indices", "[N]", 1, (const int64_t[]){p->N}));
        } else {
            TRY(fkda_check_shape(s, "state_indices", "[N, T_max] (or [N])", 2, (const int64_t[]){p->N, -1}));
            p->indices_per_token = 1;
            p->indices_tokens = s->shape[1];
            if (p->indices_tokens < 1)
                return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "state_indices: 2-D indices need T_max >= 1 columns");
            if (!fkda_tensor_present(&a->cu_seqlens) && p->T > p->indices_tokens)
                return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                                 "state_indices: has %lld columns, fewer than the T = %lld tokens per sequence",
                                 (long long)p->indices_tokens, (long long)p->T);
        }
        fkda_to_operand(s, NULL, &p->state_indices);
    } else if (p->pool_size < p->N) {
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "state_pool: has %lld slots, but without state_indices each of the N = %lld sequences "
                         "needs its own slot",
                         (long long)p->pool_size, (long long)p->N);
    }

    if (fkda_tensor_present(&a->num_accepted_tokens)) {
        const fkda_tensor *c = &a->num_accepted_tokens;
        if (!p->indices_per_token)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "num_accepted_tokens: needs 2-D state_indices [N, T_max] (a slot per draft token)");
        TRY(fkda_check_layout(c, "num_accepted_tokens"));
        TRY(fkda_check_dtype(c, "num_accepted_tokens", FKDA_INDEX_DTYPES, "int64 or int32"));
        TRY(fkda_check_shape(c, "num_accepted_tokens", "[N]", 1, (const int64_t[]){p->N}));
        fkda_to_operand(c, NULL, &p->num_accepted_tokens);
    }

    /* The two outputs, the pool and out, must not alias any input this call reads, nor each other
     * (out against the per-token inputs was checked with them). */
    TRY(fkda_check_disjoint_from_tokens(&a->state_pool, "state_pool", &in, p));
    const struct {
        const fkda_tensor *t;
        const char *name;
    } indices[] = {
        {&a->state_indices, "state_indices"},
        {&a->num_accepted_tokens, "num_accepted_tokens"},
    };
    for (size_t i = 0; i < sizeof indices / sizeof indices[0]; i++) {
        TRY(fkda_check_disjoint(&a->state_pool, "state_pool", indices[i].t, indices[i].name));
        TRY(fkda_check_disjoint(&a->out, "out", indices[i].t, indices[i].name));
    }

    if (device->type == FKDA_DEVICE_CPU && p->state_indices.data) TRY(check_index_contents(p));
    return FKDA_OK;
}

fkda_status fkda_decode_workspace_size(const fkda_decode_args *args, const fkda_device *device, size_t *bytes)
{
    fkda_clear_error();
    if (bytes == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "bytes: is NULL");
    *bytes = 0;
    fkda_problem p;
    TRY(fkda_validate_decode(args, device, &p));
    return fkda_dispatch_workspace(&p, bytes);
}

fkda_status fkda_decode(const fkda_decode_args *args, const fkda_device *device, void *workspace,
                        size_t workspace_bytes)
{
    fkda_clear_error();
    fkda_launch_log_clear();
    fkda_problem p;
    TRY(fkda_validate_decode(args, device, &p));
    return fkda_dispatch_run(&p, workspace, workspace_bytes);
}

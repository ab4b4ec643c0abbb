/* prefill_states.c: validation of the prefill's states for serving engines; see prefill_states.h. */
#include "prefill_states.h"

#include "../core/error.h"
#include "token_inputs.h"
#include "validate.h"

#define DEFAULT_INTERMEDIATE_CHUNK 64

typedef struct named_tensor {
    const fkda_tensor *t;
    const char *name;
} named_tensor;

/* A [N] index or flag tensor. */
static fkda_status validate_per_sequence(const fkda_tensor *t, const char *name, const fkda_problem *p, unsigned dtypes,
                                         const char *dtypes_what, fkda_operand *op)
{
    TRY(fkda_check_layout(t, name));
    TRY(fkda_check_dtype(t, name, dtypes, dtypes_what));
    TRY(fkda_check_shape(t, name, "[N]", 1, (const int64_t[]){p->N}));
    fkda_to_operand(t, NULL, op);
    return FKDA_OK;
}

/* On the CPU the slot indices are readable: every slot must lie inside the pool (negative ones
 * mean "none"), as for the decode's state_indices. */
static fkda_status check_slots(const fkda_operand *idx, const char *name, const fkda_problem *p, int64_t columns)
{
    if (idx->data == NULL) return FKDA_OK;
    for (int64_t n = 0; n < p->N; n++)
        for (int64_t c = 0; c < columns; c++) {
            const int64_t slot = fkda_read_index(idx, n * idx->stride[0] + c * idx->stride[1]);
            if (slot >= p->pool_size) {
                if (columns == 1 && idx->stride[1] == 0)
                    return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                                     "%s: entry [%lld] = %lld is outside the state_pool of %lld slots", name,
                                     (long long)n, (long long)slot, (long long)p->pool_size);
                return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                                 "%s: entry [%lld, %lld] = %lld is outside the state_pool of %lld slots", name,
                                 (long long)n, (long long)c, (long long)slot, (long long)p->pool_size);
            }
        }
    return FKDA_OK;
}

/* Rows of intermediate_states: B * ceil(T / chunk), or with cu_seqlens the sum over sequences of
 * ceil(length / chunk); -1 (any) where cu_seqlens lives on a GPU and cannot be read. */
static int64_t intermediate_rows(const fkda_problem *p)
{
    const int64_t chunk = p->intermediate_chunk;
    if (p->cu_seqlens.data == NULL) return p->B * ((p->T + chunk - 1) / chunk);
    if (p->device.type != FKDA_DEVICE_CPU) return -1;
    int64_t rows = 0;
    for (int64_t n = 0; n < p->N; n++) {
        int64_t row, start, length;
        fkda_sequence_bounds(p, n, &row, &start, &length);
        rows += (length + chunk - 1) / chunk;
    }
    return rows;
}

static fkda_status validate_pool(const fkda_prefill_args *a, fkda_problem *p)
{
    if (!fkda_tensor_present(&a->state_pool)) {
        if (fkda_tensor_present(&a->initial_state_indices))
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "initial_state_indices: needs state_pool (the slots it names)");
        if (fkda_tensor_present(&a->final_state_indices))
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "final_state_indices: needs state_pool (the slots it names)");
        return FKDA_OK;
    }
    if (fkda_tensor_present(&a->initial_state))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "state_pool: excludes initial_state (give initial_state_indices into the pool instead)");
    if (fkda_tensor_present(&a->final_state))
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "state_pool: excludes final_state (give final_state_indices into the pool instead)");
    TRY(fkda_validate_state(&a->state_pool, "state_pool", p, -1, 1, &p->state_in, &p->pool_size));
    p->state_out = p->state_in;
    p->uses_pool = 1;
    if (fkda_tensor_present(&a->initial_state_indices))
        TRY(validate_per_sequence(&a->initial_state_indices, "initial_state_indices", p, FKDA_INDEX_DTYPES,
                                  "int64 or int32", &p->initial_state_indices));
    if (fkda_tensor_present(&a->final_state_indices))
        TRY(validate_per_sequence(&a->final_state_indices, "final_state_indices", p, FKDA_INDEX_DTYPES,
                                  "int64 or int32", &p->final_state_indices));
    if ((p->initial_state_indices.data == NULL || p->final_state_indices.data == NULL) && p->pool_size < p->N)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "state_pool: has %lld slots, but without initial_state_indices and final_state_indices "
                         "each of the N = %lld sequences uses its own slot n",
                         (long long)p->pool_size, (long long)p->N);
    return FKDA_OK;
}

static fkda_status validate_checkpoints(const fkda_prefill_args *a, fkda_problem *p)
{
    const int has_states = fkda_tensor_present(&a->checkpoint_states);
    const int has_indices = fkda_tensor_present(&a->checkpoint_indices);
    if (!fkda_tensor_present(&a->checkpoint_offsets)) {
        if (has_states)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "checkpoint_states: needs checkpoint_offsets (the token counts to checkpoint at)");
        if (has_indices)
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "checkpoint_indices: needs checkpoint_offsets (the token counts to checkpoint at)");
        return FKDA_OK;
    }
    const fkda_tensor *o = &a->checkpoint_offsets;
    TRY(fkda_check_layout(o, "checkpoint_offsets"));
    TRY(fkda_check_dtype(o, "checkpoint_offsets", FKDA_INDEX_DTYPES, "int64 or int32"));
    TRY(fkda_check_shape(o, "checkpoint_offsets", "[N, C]", 2, (const int64_t[]){p->N, -1}));
    p->checkpoints = o->shape[1];
    fkda_to_operand(o, NULL, &p->checkpoint_offsets);
    if (has_states && has_indices)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "checkpoint_indices: give either checkpoint_states or checkpoint_indices, not both");
    if (!has_states && !has_indices)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "checkpoint_offsets: needs checkpoint_states or checkpoint_indices (where the states go)");
    if (has_states) {
        TRY(fkda_validate_state_rows(&a->checkpoint_states, "checkpoint_states", p, p->N * p->checkpoints, "N * C",
                                     FKDA_STATE_DTYPES, "float32 or bfloat16", 1, &p->checkpoint_states, NULL));
        return FKDA_OK;
    }
    const fkda_tensor *i = &a->checkpoint_indices;
    if (!p->uses_pool)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "checkpoint_indices: needs state_pool (the slots it names)");
    TRY(fkda_check_layout(i, "checkpoint_indices"));
    TRY(fkda_check_dtype(i, "checkpoint_indices", FKDA_INDEX_DTYPES, "int64 or int32"));
    TRY(fkda_check_shape(i, "checkpoint_indices", "[N, C] (as checkpoint_offsets)", 2,
                         (const int64_t[]){p->N, p->checkpoints}));
    fkda_to_operand(i, NULL, &p->checkpoint_indices);
    return FKDA_OK;
}

static fkda_status validate_intermediate(const fkda_prefill_args *a, fkda_problem *p)
{
    if (a->intermediate_chunk_size < 0)
        return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                         "intermediate_chunk_size: %d is negative; expected 0 (64 tokens) or a chunk size >= 1",
                         (int)a->intermediate_chunk_size);
    p->intermediate_chunk = a->intermediate_chunk_size ? a->intermediate_chunk_size : DEFAULT_INTERMEDIATE_CHUNK;
    if (!fkda_tensor_present(&a->intermediate_states)) return FKDA_OK;
    const char *rows_name = p->cu_seqlens.data ? "sum of ceil(length / chunk)" : "B * ceil(T / chunk)";
    TRY(fkda_validate_state_rows(&a->intermediate_states, "intermediate_states", p, intermediate_rows(p), rows_name,
                                 FKDA_FLOAT_DTYPES, "float32, bfloat16 or float16", 1, &p->intermediate_states,
                                 &p->intermediate_rows));
    return FKDA_OK;
}

/* The new outputs (the pool, checkpoint_states, intermediate_states) must not share memory with
 * any other tensor of the call, and the older outputs (out, final_state) not with the new inputs. */
static fkda_status check_overlaps(const fkda_prefill_args *a, const fkda_token_inputs *in, const fkda_problem *p)
{
    const named_tensor new_inputs[] = {
        {&a->has_initial_state, "has_initial_state"},     {&a->initial_state_indices, "initial_state_indices"},
        {&a->final_state_indices, "final_state_indices"}, {&a->checkpoint_offsets, "checkpoint_offsets"},
        {&a->checkpoint_indices, "checkpoint_indices"},
    };
    const named_tensor states[] = {
        {&a->initial_state, "initial_state"},
        {&a->final_state, "final_state"},
        {&a->has_initial_state, "has_initial_state"},
        {&a->initial_state_indices, "initial_state_indices"},
        {&a->final_state_indices, "final_state_indices"},
        {&a->checkpoint_offsets, "checkpoint_offsets"},
        {&a->checkpoint_indices, "checkpoint_indices"},
        {&a->state_pool, "state_pool"},
        {&a->checkpoint_states, "checkpoint_states"},
        {&a->intermediate_states, "intermediate_states"},
    };
    const named_tensor new_outputs[] = {
        {&a->state_pool, "state_pool"},
        {&a->checkpoint_states, "checkpoint_states"},
        {&a->intermediate_states, "intermediate_states"},
    };
    for (size_t o = 0; o < sizeof new_outputs / sizeof new_outputs[0]; o++) {
        TRY(fkda_check_disjoint_from_tokens(new_outputs[o].t, new_outputs[o].name, in, p));
        for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
            if (states[i].t != new_outputs[o].t)
                TRY(fkda_check_disjoint(new_outputs[o].t, new_outputs[o].name, states[i].t, states[i].name));
    }
    for (size_t i = 0; i < sizeof new_inputs / sizeof new_inputs[0]; i++) {
        TRY(fkda_check_disjoint(&a->out, "out", new_inputs[i].t, new_inputs[i].name));
        TRY(fkda_check_disjoint(&a->final_state, "final_state", new_inputs[i].t, new_inputs[i].name));
    }
    return FKDA_OK;
}

fkda_status fkda_validate_prefill_states(const fkda_prefill_args *a, const fkda_token_inputs *in, fkda_problem *p)
{
    TRY(validate_pool(a, p));
    if (fkda_tensor_present(&a->has_initial_state)) {
        /* given, not "has data": an empty state (no sequence) may have data NULL */
        if (!fkda_tensor_present(&a->initial_state) && !fkda_tensor_present(&a->state_pool))
            return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT,
                             "has_initial_state: needs initial_state or state_pool (the states it selects)");
        TRY(validate_per_sequence(&a->has_initial_state, "has_initial_state", p,
                                  FKDA_INDEX_DTYPES | FKDA_MASK(FKDA_DTYPE_BOOL), "bool, int32 or int64",
                                  &p->has_initial_state));
    }
    TRY(validate_checkpoints(a, p));
    TRY(validate_intermediate(a, p));
    TRY(check_overlaps(a, in, p));
    if (p->device.type == FKDA_DEVICE_CPU && p->uses_pool) {
        TRY(check_slots(&p->initial_state_indices, "initial_state_indices", p, 1));
        TRY(check_slots(&p->final_state_indices, "final_state_indices", p, 1));
        TRY(check_slots(&p->checkpoint_indices, "checkpoint_indices", p, p->checkpoints));
    }
    return FKDA_OK;
}

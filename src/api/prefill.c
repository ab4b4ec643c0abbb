/* prefill.c: the public prefill entry points: validate everything, then dispatch. */
#include <string.h>

#include "dispatch.h"
#include "../core/error.h"
#include "../core/launch_log.h"
#include "prefill_states.h"
#include "token_inputs.h"
#include "validate.h"

static fkda_status validate_prefill(const fkda_prefill_args *a, const fkda_device *device, fkda_problem *p)
{
    if (a == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "args: is NULL");
    TRY(fkda_validate_device(device));
    fkda_token_inputs in = {&a->q,     &a->k,       &a->v,          &a->g,   &a->beta,
                            &a->A_log, &a->dt_bias, &a->cu_seqlens, &a->out, &a->options};
    TRY(fkda_validate_token_inputs(&in, device, FKDA_OP_PREFILL, p));
    p->pool_size = p->N;

    if (fkda_tensor_present(&a->initial_state))
        TRY(fkda_validate_state(&a->initial_state, "initial_state", p, p->N, 0, &p->state_in, NULL));
    if (fkda_tensor_present(&a->final_state)) {
        const fkda_tensor *f = &a->final_state;
        TRY(fkda_validate_state(f, "final_state", p, p->N, 1, &p->state_out, NULL));
        TRY(fkda_check_disjoint_from_tokens(f, "final_state", &in, p));
        /* The same view is an in-place update (each backend reads a state before writing it);
         * any other overlap would mix two sequences' states. */
        if (!fkda_same_view(f, &a->initial_state))
            TRY(fkda_check_disjoint(f, "final_state", &a->initial_state, "initial_state"));
    }
    if (fkda_tensor_present(&a->initial_state))
        TRY(fkda_check_disjoint(&a->out, "out", &a->initial_state, "initial_state"));
    return fkda_validate_prefill_states(a, &in, p);
}

fkda_status fkda_prefill_workspace_size(const fkda_prefill_args *args, const fkda_device *device, size_t *bytes)
{
    fkda_clear_error();
    if (bytes == NULL) return fkda_fail(FKDA_ERROR_INVALID_ARGUMENT, "bytes: is NULL");
    *bytes = 0;
    fkda_problem p;
    TRY(validate_prefill(args, device, &p));
    return fkda_dispatch_workspace(&p, bytes);
}

fkda_status fkda_prefill(const fkda_prefill_args *args, const fkda_device *device, void *workspace,
                         size_t workspace_bytes)
{
    fkda_clear_error();
    fkda_launch_log_clear();
    fkda_problem p;
    TRY(validate_prefill(args, device, &p));
    return fkda_dispatch_run(&p, workspace, workspace_bytes);
}

/*
 * token_inputs.h: validation shared by prefill and decode: the device, the per-token tensors
 * (q, k, v, g, beta, out), the gate parameters, cu_seqlens and the options. Fills every field
 * of the problem except the states and the decode-only tensors.
 */
#ifndef FKDA_API_TOKEN_INPUTS_H
#define FKDA_API_TOKEN_INPUTS_H

#include "../core/problem.h"

typedef struct fkda_token_inputs {
    const fkda_tensor *q, *k, *v, *g, *beta;
    const fkda_tensor *A_log, *dt_bias, *cu_seqlens;
    const fkda_tensor *out;
    const fkda_options *options;
} fkda_token_inputs;

fkda_status fkda_validate_device(const fkda_device *device);

fkda_status fkda_validate_token_inputs(const fkda_token_inputs *in, const fkda_device *device, fkda_op_kind op,
                                       fkda_problem *p);

/* An output `t` (called `name` in the message) must share no memory with any tensor of the token
 * inputs the call reads: q, k, v, g, beta, A_log and dt_bias (where the gate reads them),
 * cu_seqlens, and out (unless t is out). Call after fkda_validate_token_inputs. */
fkda_status fkda_check_disjoint_from_tokens(const fkda_tensor *t, const char *name, const fkda_token_inputs *in,
                                            const fkda_problem *p);

/* A state tensor ([slots, HV, K, V], or [slots, HV, V, K] when state_v_first) into canonical
 * order. `slots` is the expected first dimension (-1: any, then read back from *slots_out). */
fkda_status fkda_validate_state(const fkda_tensor *t, const char *name, const fkda_problem *p, int64_t slots,
                                int is_output, fkda_operand *op, int64_t *slots_out);

/* The same for any state-shaped tensor: `rows` expected first dimension (-1: any) called
 * `rows_name` in the message, and the accepted dtypes. */
fkda_status fkda_validate_state_rows(const fkda_tensor *t, const char *name, const fkda_problem *p, int64_t rows,
                                     const char *rows_name, unsigned dtypes, const char *dtypes_what, int is_output,
                                     fkda_operand *op, int64_t *rows_out);

#endif /* FKDA_API_TOKEN_INPUTS_H */

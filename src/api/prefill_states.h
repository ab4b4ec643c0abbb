/*
 * prefill_states.h: validation of the prefill's states for serving engines (has_initial_state,
 * the state pool and its indices, checkpoints, intermediate states), after the token inputs and
 * the plain initial / final states have been validated into the problem.
 */
#ifndef FKDA_API_PREFILL_STATES_H
#define FKDA_API_PREFILL_STATES_H

#include "../core/problem.h"
#include "token_inputs.h"

fkda_status fkda_validate_prefill_states(const fkda_prefill_args *a, const fkda_token_inputs *in, fkda_problem *p);

#endif /* FKDA_API_PREFILL_STATES_H */

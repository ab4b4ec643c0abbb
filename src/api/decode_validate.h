/*
 * decode_validate.h: the validation of fkda_decode_args, shared by fkda_decode and by
 * fkda_decode_layer (which validates its recurrence as a decode over views of its inputs).
 */
#ifndef FKDA_API_DECODE_VALIDATE_H
#define FKDA_API_DECODE_VALIDATE_H

#include "../core/problem.h"

/* Every check of fkda_decode, filling the problem (op FKDA_OP_DECODE). */
fkda_status fkda_validate_decode(const fkda_decode_args *a, const fkda_device *device, fkda_problem *p);

#endif /* FKDA_API_DECODE_VALIDATE_H */

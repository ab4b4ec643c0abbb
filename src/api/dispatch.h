/*
 * dispatch.h: the last steps every public call shares once its arguments are validated: the
 * backend's own checks, the workspace size, the workspace check, and the run.
 */
#ifndef FKDA_API_DISPATCH_H
#define FKDA_API_DISPATCH_H

#include <stddef.h>

#include "../core/problem.h"

/* Required workspace bytes for a validated problem on its device. */
fkda_status fkda_dispatch_workspace(const fkda_problem *p, size_t *bytes);

/* Backend checks, workspace checks, then the run. */
fkda_status fkda_dispatch_run(const fkda_problem *p, void *workspace, size_t workspace_bytes);

#endif /* FKDA_API_DISPATCH_H */

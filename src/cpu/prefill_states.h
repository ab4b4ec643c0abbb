/*
 * prefill_states.h: where a CPU prefill reads each sequence's initial state and writes the states
 * a serving engine asks for (the final state, checkpoints, intermediate states); the rules are
 * the comment above fkda_prefill_args in flashkda.h.
 *
 * Before the run, a call on a state pool copies every sequence's initial state out of the pool
 * into the workspace ("staging"), so that a sequence writing a slot another sequence starts from
 * cannot race with that read: the run then reads the staged copy (slot n) and writes the pool.
 *
 * During the run, a path walks the positions (token counts from the sequence's start) at which
 * some state is wanted, "marks": every checkpoint offset in [0, length] and every multiple of the
 * intermediate chunk below length. fkda_marks_next finds the next one, fkda_marks_emit_* write the
 * state at one position to every target that asks for it.
 */
#ifndef FKDA_CPU_PREFILL_STATES_H
#define FKDA_CPU_PREFILL_STATES_H

#include <stddef.h>
#include <stdint.h>

#include "../core/problem.h"
#include "state_io.h"

/* Per-call data a path needs besides the problem: the first row of intermediate_states of each
 * sequence (NULL without intermediate states). */
typedef struct fkda_prefill_extras {
    const int64_t *first_rows;
} fkda_prefill_extras;

/* Workspace bytes for the staged initial states and the intermediate row table (a multiple of
 * FKDA_CPU_ALIGN; 0 when neither is needed). */
size_t fkda_prefill_states_workspace(const fkda_problem *p);

/* Fills the first fkda_prefill_states_workspace(p) bytes of `workspace` and describes the run:
 * *staged is p with state_in pointing at the staged copy where there is one. */
void fkda_prefill_states_prepare(const fkda_problem *p, void *workspace, fkda_problem *staged,
                                 fkda_prefill_extras *extras);

/* 1 when a path has states to write before the end of a sequence. */
static inline int fkda_has_marks(const fkda_problem *p)
{
    return p->checkpoint_offsets.data != NULL || p->intermediate_states.data != NULL;
}

typedef struct fkda_marks {
    const fkda_problem *p;
    int64_t n, length, first_row;
} fkda_marks;

static inline fkda_marks fkda_marks_for(const fkda_problem *p, const fkda_prefill_extras *extras, int64_t n,
                                        int64_t length)
{
    fkda_marks m = {p, n, length, extras->first_rows ? extras->first_rows[n] : 0};
    return m;
}

static inline int64_t fkda_checkpoint_offset(const fkda_problem *p, int64_t n, int64_t c)
{
    const fkda_operand *o = &p->checkpoint_offsets;
    return fkda_read_index(o, n * o->stride[0] + c * o->stride[1]);
}

/* The smallest mark in (pos, length], or length + 1 when there is none. */
static inline int64_t fkda_marks_next(const fkda_marks *m, int64_t pos)
{
    const fkda_problem *p = m->p;
    int64_t next = m->length + 1;
    if (p->intermediate_states.data) {
        const int64_t chunk = p->intermediate_chunk, boundary = (pos / chunk + 1) * chunk;
        if (boundary < m->length && boundary < next) next = boundary;
    }
    if (p->checkpoint_offsets.data)
        for (int64_t c = 0; c < p->checkpoints; c++) {
            const int64_t offset = fkda_checkpoint_offset(p, m->n, c);
            if (offset > pos && offset <= m->length && offset < next) next = offset;
        }
    return next;
}

/* Calls store(target operand, slot) for every state wanted at position pos. */
#define FKDA_MARKS_FOR_EACH_TARGET(m, pos, STORE)                                                           \
    do {                                                                                                    \
        const fkda_problem *p_ = (m)->p;                                                                    \
        if (p_->intermediate_states.data && (pos) < (m)->length && (pos) % p_->intermediate_chunk == 0)     \
            STORE(&p_->intermediate_states, (m)->first_row + (pos) / p_->intermediate_chunk);               \
        if (p_->checkpoint_offsets.data)                                                                    \
            for (int64_t c_ = 0; c_ < p_->checkpoints; c_++) {                                              \
                if (fkda_checkpoint_offset(p_, (m)->n, c_) != (pos)) continue;                              \
                if (p_->checkpoint_states.data) {                                                           \
                    STORE(&p_->checkpoint_states, (m)->n * p_->checkpoints + c_);                           \
                } else {                                                                                    \
                    const fkda_operand *i_ = &p_->checkpoint_indices;                                       \
                    const int64_t slot_ = fkda_read_index(i_, (m)->n * i_->stride[0] + c_ * i_->stride[1]); \
                    if (slot_ >= 0) STORE(&p_->state_out, slot_);                                           \
                }                                                                                           \
            }                                                                                               \
    } while (0)

/* The value columns [v0, v0 + nv) of head h's state (a [K][ld] float block) at position pos. */
static inline void fkda_marks_emit_float(const fkda_marks *m, int64_t pos, int64_t h, int64_t K, int64_t v0, int64_t nv,
                                         int64_t ld, const float *S)
{
#define FKDA_STORE_FLOAT_(op, slot) fkda_state_store_float(op, slot, h, K, v0, nv, ld, S)
    FKDA_MARKS_FOR_EACH_TARGET(m, pos, FKDA_STORE_FLOAT_);
#undef FKDA_STORE_FLOAT_
}

/* Head h's whole state (a dense [K][V] double array) at position pos. */
static inline void fkda_marks_emit_double(const fkda_marks *m, int64_t pos, int64_t h, int64_t K, int64_t V,
                                          const double *S)
{
#define FKDA_STORE_DOUBLE_(op, slot) fkda_state_store_double(op, slot, h, K, V, S)
    FKDA_MARKS_FOR_EACH_TARGET(m, pos, FKDA_STORE_DOUBLE_);
#undef FKDA_STORE_DOUBLE_
}

#endif /* FKDA_CPU_PREFILL_STATES_H */

/*
 * flashkda.h: the public C API of libflashkda, kernels for Kimi Delta Attention (KDA).
 *
 * One header, plain C, no dependencies. The operations:
 *
 *   fkda_prefill  the chunked forward over whole prompts (fla's chunk_kda, FlashKDA's fwd)
 *   fkda_decode   the recurrent form over a few tokens per sequence, updating states in place
 *                 inside a state pool (fla's fused_recurrent_kda as vLLM calls it)
 *   fkda_decode_layer  a whole KDA layer's decode step: the short conv with its state, the
 *                 decode, and the gated RMSNorm of the output (vLLM's fused_kda_decode)
 *
 * Each operation runs on a device named by the caller (the CPU, or a CUDA GPU and stream). The
 * caller asks for the workspace size, provides that many bytes on the same device, and calls.
 * Nothing is allocated on the GPU path, so a call can be captured into a CUDA graph.
 *
 * Every call validates every argument before it writes anything. On failure it returns a status
 * other than FKDA_OK, writes nothing to any output, and leaves a message naming the argument and
 * what was expected; read it with fkda_last_error() on the same thread.
 *
 * The function, per sequence n and value head h (qk head h / (HV / H)), tokens t = 1..T_n:
 *
 *     S  <- diag(exp(a_t)) S                     decay along the key dimension
 *     S  <- S + b_t k_t (v_t - S^T k_t)^T         delta rule
 *     o_t = scale * S^T q_t
 *
 * with the state S in R^{K x V}, and a_t, b_t, q_t, k_t derived from the inputs by the options
 * below (see fkda_options). The state is float32 inside every backend.
 */
#ifndef FLASHKDA_H
#define FLASHKDA_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(FKDA_BUILDING_LIBRARY)
#define FKDA_API __declspec(dllexport)
#elif defined(__GNUC__)
#define FKDA_API __attribute__((visibility("default")))
#else
#define FKDA_API
#endif

#define FKDA_VERSION_MAJOR 0
#define FKDA_VERSION_MINOR 2
#define FKDA_VERSION_PATCH 0

/* ------------------------------------------------------------------------------------------------
 * Status codes and error messages
 * --------------------------------------------------------------------------------------------- */

typedef enum fkda_status {
    FKDA_OK = 0,
    FKDA_ERROR_INVALID_ARGUMENT = 1, /* a shape, dtype, stride or value that is wrong for any device */
    FKDA_ERROR_UNSUPPORTED = 2,      /* valid, but the chosen device cannot run this combination yet */
    FKDA_ERROR_WORKSPACE = 3,        /* workspace missing, too small or misaligned */
    FKDA_ERROR_DEVICE = 4,           /* no such device, built without CUDA, or a CUDA call failed */
    FKDA_ERROR_OUT_OF_MEMORY = 5,    /* a host allocation failed */
    FKDA_ERROR_INTERNAL = 6          /* a bug: please report it with the message */
} fkda_status;

/* A short constant name for a status ("invalid argument", ...). */
FKDA_API const char *fkda_status_name(fkda_status status);

/* The message of the last failed call on this thread ("" after a successful one). The pointer
 * stays valid until the next call of this library on the same thread. */
FKDA_API const char *fkda_last_error(void);

/* The GPU kernels that the calling thread's last fkda_prefill, fkda_decode or fkda_decode_layer
 * launched, in launch order and separated by spaces; a kernel launched in clusters of C > 1 CTAs
 * reads name[C] ("layer_f32_kv_w4_io16[4]"). "" before any such call, after one on the CPU and
 * after one that failed before its first launch. For tests and profiling, to see which of the
 * launch rules' kernels a call took: the names follow the kernels and are not a stable interface.
 * The text stays valid until the next fkda_last_kernels() on the same thread. */
FKDA_API const char *fkda_last_kernels(void);

/* "0.1.0", and whether this build contains the CUDA backend (1) or not (0). */
FKDA_API const char *fkda_version(void);
FKDA_API int fkda_has_cuda(void);

/* ------------------------------------------------------------------------------------------------
 * Tensors and devices
 * --------------------------------------------------------------------------------------------- */

typedef enum fkda_dtype {
    FKDA_DTYPE_F32 = 0,
    FKDA_DTYPE_F16 = 1,
    FKDA_DTYPE_BF16 = 2,
    FKDA_DTYPE_I32 = 3,
    FKDA_DTYPE_I64 = 4,
    FKDA_DTYPE_BOOL = 5 /* one byte, 0 false, anything else true (a bool or uint8 array) */
} fkda_dtype;

#define FKDA_MAX_DIMS 4

/* Tensor flags. */
#define FKDA_TENSOR_READ_ONLY 1u /* the memory must not be written (a NumPy array with writeable=False) */

/*
 * A strided view of memory on the call's device. An optional tensor is absent when it is all
 * zero (data NULL and ndim 0: `fkda_tensor none = {0};`). Strides are in elements, not bytes,
 * and may be any non-negative value, except that the last dimension of every tensor must be
 * contiguous (stride 1, or any stride when its size is 1). An output's elements must not overlap
 * one another, nor any input (a final state may be the very same view as the initial state, for
 * an in-place update). A tensor with no elements may have data NULL. data must be aligned to
 * its element size.
 */
typedef struct fkda_tensor {
    void *data;
    fkda_dtype dtype;
    int32_t ndim;
    int64_t shape[FKDA_MAX_DIMS];
    int64_t stride[FKDA_MAX_DIMS];
    uint32_t flags;
} fkda_tensor;

typedef enum fkda_device_type { FKDA_DEVICE_CPU = 0, FKDA_DEVICE_CUDA = 1 } fkda_device_type;

typedef struct fkda_device {
    fkda_device_type type;
    int32_t index;       /* CUDA: the device ordinal every tensor lives on. CPU: ignored. */
    void *stream;        /* CUDA: the cudaStream_t to run on (NULL: the legacy default stream). */
    int32_t num_threads; /* CPU: worker threads (0: up to one per online core, fewer for small calls). */
    int32_t reference;   /* CPU: 1 runs the float64 token-by-token reference instead of the fast path. */
} fkda_device;

/* ------------------------------------------------------------------------------------------------
 * Options shared by prefill and decode (the pre-activations applied inside the kernel)
 * --------------------------------------------------------------------------------------------- */

typedef enum fkda_gate {
    /* g is already the log-space decay a_t (<= 0 per key channel). A_log and dt_bias unused. */
    FKDA_GATE_NONE = 0,
    /* a_t = lower_bound * sigmoid(exp(A_log[h]) * (g_t + dt_bias[h]))  ("safe gate" when
     * lower_bound is in [-5, 0)); without A_log: a_t = lower_bound * sigmoid(g_t + dt_bias[h]). */
    FKDA_GATE_LOWER_BOUND = 1,
    /* a_t = -exp(A_log[h]) * softplus(g_t + dt_bias[h]); needs A_log. */
    FKDA_GATE_SOFTPLUS = 2
} fkda_gate;

typedef struct fkda_options {
    double scale; /* output scale; 0 selects the default K^-0.5 */
    fkda_gate gate;
    double lower_bound;       /* FKDA_GATE_LOWER_BOUND only: finite and < 0 */
    int32_t use_qk_l2norm;    /* q, k <- x / sqrt(sum(x^2) + 1e-6), in float32 */
    int32_t use_beta_sigmoid; /* b_t = sigmoid(beta_t); off: b_t = beta_t */
    int32_t allow_neg_eigval; /* b_t = 2 sigmoid(beta_t); needs use_beta_sigmoid */
    int32_t state_v_first;    /* states are laid out [.., V, K] instead of [.., K, V] */
} fkda_options;

/* The defaults of fla's chunk_kda: default scale, gate off, no norm, no sigmoid, [K, V] states. */
FKDA_API fkda_options fkda_default_options(void);

/* ------------------------------------------------------------------------------------------------
 * Prefill: the chunked forward over B equal-length sequences or one packed varlen batch
 * --------------------------------------------------------------------------------------------- */

/*
 * Shapes (N sequences; B batch rows of T tokens; H qk heads; HV value heads, a multiple of H;
 * K, V head dims, 1..256 each):
 *
 *   q, k            [B, T, H, K]    f32 / f16 / bf16
 *   v               [B, T, HV, V]   same dtype as q and k
 *   g               [B, T, HV, K]   any float dtype
 *   beta            [B, T, HV]      any float dtype
 *   A_log           [HV]            optional, any float dtype
 *   dt_bias         [HV, K] or [HV * K]   optional, any float dtype
 *   cu_seqlens      [N + 1]         optional, int64 or int32; needs B == 1; 0 = c_0 <= c_1 <= ... = T
 *   initial_state   [N, HV, K, V]   optional, f32 or bf16 ([N, HV, V, K] when state_v_first)
 *   final_state     [N, HV, K, V]   optional output, f32 or bf16 (same layout rule)
 *   out             [B, T, HV, V]   output, same dtype as v
 *
 * Without cu_seqlens, N = B and sequence n is batch row n. A zero-length sequence leaves its
 * final state equal to its initial state (or zero).
 *
 * States for serving engines (all optional; every layout follows state_v_first as above, and
 * every state is f32 or bf16 unless said otherwise). An fkda_tensor has at most 4 dimensions, so
 * the 5-D state arrays are passed with their first two dimensions merged (row n * C + c):
 *
 *   has_initial_state     [N]  bool, int32 or int64; 0: sequence n starts from the zero state
 *                              whatever initial_state or the pool holds (as vLLM passes it).
 *                              Needs initial_state or state_pool.
 *   state_pool            [P, HV, K, V]  read and written in place, like fkda_decode_args'
 *                              state_pool; excludes initial_state and final_state.
 *   initial_state_indices [N]  int32 / int64: sequence n starts from slot idx[n] (negative: the
 *                              zero state). Absent: slot n (then P >= N).
 *   final_state_indices   [N]  int32 / int64: sequence n's final state goes to slot idx[n]
 *                              (negative: not written). Absent: slot n (then P >= N). A slot may
 *                              be the sequence's own initial slot or another sequence's initial
 *                              slot: every initial state is read before any state is written.
 *                              Two sequences writing one slot is a caller error.
 *   checkpoint_offsets    [N, C]  int32 / int64: token counts from the start of sequence n. The
 *                              state after offset tokens of sequence n is written to entry
 *                              (n, c); offset 0 writes the initial state. An offset < 0 or
 *                              > the sequence's length writes nothing (pad ragged lists with -1).
 *                              A checkpoint equals bitwise the final state of a prefill over the
 *                              first offset tokens, and checkpoints leave `out` unchanged.
 *   checkpoint_states     [N * C, HV, K, V]  output: entry (n, c) is row n * C + c.
 *   checkpoint_indices    [N, C]  int32 / int64, instead of checkpoint_states: entry (n, c)
 *                              goes to pool slot idx[n, c] (negative: not written); needs
 *                              state_pool.
 *   intermediate_states   [B * NT, HV, K, V]  output, f32, bf16 or f16: fla's `h`, the state
 *                              entering each chunk of intermediate_chunk_size tokens. Row
 *                              b * NT + i holds the state after i * chunk tokens of row b, with
 *                              NT = ceil(T / chunk); with cu_seqlens (B = 1) the sequences'
 *                              chunks are concatenated: sequence n's rows start at the sum over
 *                              m < n of ceil(length_m / chunk), and an empty sequence has none.
 *   intermediate_chunk_size   tokens per chunk of intermediate_states (0: 64; any value >= 1).
 *
 * Slot indices outside the pool (>= P) are refused on the CPU, where the indices are read
 * before anything runs (the decode's rule). On CUDA the indices and offsets stay in device
 * memory and are not read before the launch, so there:
 *   - a slot >= P reads as the zero state and is not written (like a negative one);
 *   - each sequence's initial state is read when its own chain starts, so a final or checkpoint
 *     slot may be the sequence's own initial slot, but one that another sequence starts from
 *     gives that sequence an undefined start (serving engines give each sequence its own slot);
 *   - checkpoints are taken between 16-token chunks: an offset that is a multiple of 16, 0, or
 *     the sequence's length is written (the state at that point of this run); any other offset
 *     inside the sequence fills its checkpoint with NaN, so a wrong offset cannot pass unseen.
 *     A checkpoint equals bitwise the final state of a CUDA prefill over the prefix when that
 *     prefill does not split its sequence into segments (few heads and long sequences do;
 *     FKDA_PREFILL_SEGMENTS=1 turns segments off), since segments round the state differently;
 *   - with cu_seqlens the number of rows of intermediate_states is not checked (it depends on
 *     the lengths): a row past the tensor's first dimension is not written;
 *   - intermediate_chunk_size must be a multiple of 16 (fla uses 64), else
 *     FKDA_ERROR_UNSUPPORTED.
 */
typedef struct fkda_prefill_args {
    fkda_tensor q, k, v, g, beta;
    fkda_tensor A_log, dt_bias;
    fkda_tensor cu_seqlens;
    fkda_tensor initial_state;
    fkda_tensor final_state;
    fkda_tensor out;
    fkda_options options;
    /* States for serving engines (zero: absent; see above). */
    fkda_tensor has_initial_state;
    fkda_tensor state_pool;
    fkda_tensor initial_state_indices;
    fkda_tensor final_state_indices;
    fkda_tensor checkpoint_offsets;
    fkda_tensor checkpoint_states;
    fkda_tensor checkpoint_indices;
    fkda_tensor intermediate_states;
    int32_t intermediate_chunk_size;
} fkda_prefill_args;

/* Bytes of workspace fkda_prefill needs for these arguments on this device (may be 0). The
 * answer depends only on the shapes, dtypes and options, not on any tensor's contents (on a CUDA
 * device also on the layout of v and, for float16 v, of out: where the chain cannot read v's rows
 * as aligned 16-byte pieces, or a float16 v goes to an out that is not, the prefill keeps a copy
 * of v). Ask again when a tensor's alignment or strides change. */
FKDA_API fkda_status fkda_prefill_workspace_size(const fkda_prefill_args *args, const fkda_device *device,
                                                 size_t *bytes);

/* Runs the prefill. `workspace` is memory on the device, at least the queried size, aligned to
 * 256 bytes; it may be NULL when the size is 0. On the CUDA device the call is asynchronous on
 * the stream and allocates nothing. */
FKDA_API fkda_status fkda_prefill(const fkda_prefill_args *args, const fkda_device *device, void *workspace,
                                  size_t workspace_bytes);

/* ------------------------------------------------------------------------------------------------
 * Decode: the recurrent form, states updated in place in a pool
 * --------------------------------------------------------------------------------------------- */

/*
 * Shapes: q, k, v, g, beta, out, A_log, dt_bias and cu_seqlens as for prefill (usually T = 1 per
 * sequence, or a few draft tokens for speculative decoding). Then:
 *
 *   state_pool          [P, HV, K, V] (or [P, HV, V, K] when state_v_first), f32 or bf16; read
 *                       and written in place
 *   state_indices       optional, int32 or int64:
 *                         absent:     sequence n uses slot n (P >= N)
 *                         [N]:        sequence n reads slot idx[n] and writes its final state
 *                                     back to it; a negative idx[n] skips the sequence
 *                         [N, T_max]: sequence n reads slot idx[n, a_n - 1] and writes the state
 *                                     after its token t to slot idx[n, t] (negative: not written);
 *                                     a_n = num_accepted_tokens[n], or 1 without it. A negative
 *                                     read slot skips the sequence.
 *   num_accepted_tokens optional, [N], int32 or int64, each in 1..T_max; needs 2-D state_indices
 *
 * A skipped sequence reads and writes no state, and its rows of `out` are set to zero. Slots
 * named by two sequences of one call are a caller error (the result is unspecified).
 *
 * On CUDA the contents of cu_seqlens, state_indices and num_accepted_tokens stay in device
 * memory and are not read before the launch (so that a call can be captured in a CUDA graph):
 * the CPU refuses what the CUDA kernels instead handle by rule. A slot at or past P skips the
 * sequence like a negative one; a_n is clamped into [1, T_max]; cu_seqlens offsets are clamped
 * into [0, T], so offsets that decrease or pass T give empty or overlapping sequences (memory-
 * safe, but the overlapping rows of out are then unspecified) and rows past c_N are not written.
 * With cu_seqlens and 2-D indices, a sequence longer than T_max (refused on the CPU) writes its out
 * rows, and no state for its tokens past T_max.
 */
typedef struct fkda_decode_args {
    fkda_tensor q, k, v, g, beta;
    fkda_tensor A_log, dt_bias;
    fkda_tensor cu_seqlens;
    fkda_tensor state_pool;
    fkda_tensor state_indices;
    fkda_tensor num_accepted_tokens;
    fkda_tensor out;
    fkda_options options;
} fkda_decode_args;

FKDA_API fkda_status fkda_decode_workspace_size(const fkda_decode_args *args, const fkda_device *device, size_t *bytes);

FKDA_API fkda_status fkda_decode(const fkda_decode_args *args, const fkda_device *device, void *workspace,
                                 size_t workspace_bytes);

/* ------------------------------------------------------------------------------------------------
 * Decode layer: the fused decode step of a whole KDA layer (conv, recurrence, gated norm)
 * --------------------------------------------------------------------------------------------- */

/*
 * What a serving engine runs per KDA layer and decode step, in one call (vLLM's fused_kda_decode,
 * plus speculative decoding), for T tokens per sequence (T = 1 without a token dimension):
 *
 *   1. conv:  x = mixed_qkv[n, t], dim = 2 H K + HV V channels (q, then k, then v, each head
 *      after head). Per channel c, with the window w_0 .. w_{W-2} read from the conv state and
 *      the tokens appended to it (s = w_0 .. w_{W-2}, x_0 .. x_{T-1}):
 *        y_t[c] = silu(bias[c] + sum_{j < W} weight[c, j] * s[t + j])
 *      The raw inputs x (not y) then enter the conv state, newest last (see conv_state below).
 *   2. the KDA step of fkda_decode on q, k, v = the channels of y, with the options fixed to
 *      what the layer uses: L2 norm of q and k, beta through a sigmoid, scale K^-0.5 (or
 *      `scale`), the gate from raw g:
 *        lower_bound < 0:  a = lower_bound * sigmoid(exp(A_log[h]) * (g + dt_bias[h]))
 *        lower_bound = 0:  a = -exp(A_log[h]) * softplus(g + dt_bias[h])   (needs A_log)
 *   3. gated RMSNorm per token and value head, in float32 on the recurrence's float32 output o
 *      (which is never rounded to the io dtype in between):
 *        out = o / sqrt(mean_V(o^2) + norm_eps) * norm_weight * sigmoid(output_gate)
 *
 * Shapes (B sequences, T tokens each; H qk heads, HV value heads, K, V head dims 1..256):
 *
 *   mixed_qkv      [B, dim] or [B, T, dim]   f32 / f16 / bf16; dim = 2 H K + HV V
 *   conv_weight    [dim, W]                  any float dtype; W 2..16
 *   conv_bias      [dim]                     optional, any float dtype
 *   conv_state     [P_conv, L, dim]          f32 / f16 / bf16, read and written in place. Note
 *                  the order: token-major, channels contiguous, which is the memory of vLLM's
 *                  conv state (logically [slots, dim, L] with stride 1 along dim; pass its
 *                  transpose(-1, -2)). Without num_accepted_tokens the window is rows 0..W-2
 *                  and L >= W - 1; with it, L >= W - 2 + T (see below). Rows past those are
 *                  neither read nor written.
 *   g              [B(, T), HV, K] or flat [B(, T), HV * K]   raw gate, any float dtype
 *   beta           [B(, T), HV]              raw beta (before the sigmoid), any float dtype
 *   A_log          [HV]                      any float dtype; optional with lower_bound < 0
 *   dt_bias        [HV, K] or [HV * K]       optional, any float dtype
 *   state_pool, state_indices, num_accepted_tokens   exactly as fkda_decode_args
 *   output_gate    [B(, T), HV, V]           any float dtype
 *   norm_weight    [V]                       any float dtype (one weight per value channel,
 *                                            shared by the heads)
 *   out            [B(, T), HV, V]           output, the dtype of mixed_qkv
 *
 * The conv slot of sequence n, vLLM's rule (conv_state_indices = state_indices[:, 0]):
 *   no state_indices  slot n (P_conv >= B)
 *   [B]               slot idx[n], the same as the recurrent state
 *   [B, T_max]        slot idx[n, 0], read and written in place for every draft count
 * With num_accepted_tokens (a_n, speculative decoding), the conv state holds W - 2 + T rows as
 * a sliding window: the window the tokens continue from is rows a_n - 1 .. a_n + W - 3 (the
 * history up to the last accepted draft of the previous call), and the state written back is
 * rows a_n .. a_n + W - 3 of the old state followed by the T new inputs, so each a_n is at most
 * L - W + 2 (which T_max > T allows to pass). Without it, the window is rows 0..W-2 and the state
 * written back is the last W - 1 of (window, inputs).
 *
 * A sequence whose recurrent read slot is negative (fkda_decode's skip) is skipped here too:
 * neither pool is read or written and its rows of out are zero. With 2-D indices, a negative
 * idx[n, 0] under a non-negative read slot is refused (the conv would have no slot).
 *
 * The CPU reads the indices and counts before anything runs and refuses a conv slot outside
 * the conv pool, a running sequence without one, and an a_n past L - W + 2. On CUDA they stay
 * in device memory and are not read before the launch, so there, as for fkda_decode, a read
 * slot outside [0, P) skips the sequence and a_n is clamped into [1, T_max]; a running
 * sequence whose conv slot is outside [0, P_conv) convolves from a zero window and writes no
 * conv state; an a_n past L - W + 2 slides the window only to rows L - W + 1 .. L - 1.
 */
typedef struct fkda_decode_layer_args {
    fkda_tensor mixed_qkv;
    fkda_tensor conv_weight, conv_bias;
    fkda_tensor conv_state;
    fkda_tensor g, beta;
    fkda_tensor A_log, dt_bias;
    double lower_bound; /* 0: the softplus gate; in [-1e30, 0): the lower-bound gate */
    fkda_tensor state_pool;
    fkda_tensor state_indices;
    fkda_tensor num_accepted_tokens;
    fkda_tensor output_gate;
    fkda_tensor norm_weight;
    double norm_eps; /* finite, at least FLT_MIN (an all-zero o would otherwise divide 0 by 0) */
    fkda_tensor out;
    double scale;          /* 0: K^-0.5 */
    int32_t state_v_first; /* the recurrent pool is [P, HV, V, K] */
} fkda_decode_layer_args;

/* The workspace holds the conv outputs and the recurrence's output in float32, 4 B T dim and
 * 4 B T HV V bytes, each rounded up to the backend's alignment (64 bytes on the CPU, 256 on
 * CUDA), plus what the decode itself needs on that device: ask this function, do not compute it.
 * On the CUDA device the call is asynchronous on the stream and allocates nothing, so it can be
 * captured in a CUDA graph: one kernel for the common decode step (T = 1, 1-D indices or none,
 * K = V = 128, HV = H, a dense pool, on sm_90, for most widths and batch sizes; it leaves the
 * workspace unused), three launches (conv, decode, norm) for every other call. */
FKDA_API fkda_status fkda_decode_layer_workspace_size(const fkda_decode_layer_args *args, const fkda_device *device,
                                                      size_t *bytes);

FKDA_API fkda_status fkda_decode_layer(const fkda_decode_layer_args *args, const fkda_device *device, void *workspace,
                                       size_t workspace_bytes);

/* ------------------------------------------------------------------------------------------------
 * Helpers for building tensors
 * --------------------------------------------------------------------------------------------- */

/* A contiguous (row-major) tensor of the given shape; ndim 1..FKDA_MAX_DIMS. */
FKDA_API fkda_tensor fkda_make_tensor(void *data, fkda_dtype dtype, int32_t ndim, const int64_t *shape);

/* Bytes of one element of a dtype (0 for an unknown value). */
FKDA_API size_t fkda_dtype_size(fkda_dtype dtype);

#ifdef __cplusplus
}
#endif

#endif /* FLASHKDA_H */

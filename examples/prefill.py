"""prefill.py: a prompt through flash_kda.chunk_kda (NumPy arrays), then a decode step on a pool."""
import numpy as np

import flash_kda

B, T, H, K, V = 1, 256, 4, 64, 64
rng = np.random.default_rng(0)
q, k = rng.standard_normal((2, B, T + 1, H, K), dtype=np.float32)
v = rng.standard_normal((B, T + 1, H, V), dtype=np.float32)
g = rng.standard_normal((B, T + 1, H, K), dtype=np.float32)      # raw gate input
beta = rng.standard_normal((B, T + 1, H), dtype=np.float32)      # raw beta logits
A_log = np.zeros(H, np.float32)
dt_bias = np.zeros((H, K), np.float32)
opts = {"use_gate_in_kernel": True, "lower_bound": -5.0, "use_qk_l2norm_in_kernel": True,
        "use_beta_sigmoid_in_kernel": True, "A_log": A_log, "dt_bias": dt_bias}

# Prefill: the first T tokens; ht is the state after them, [B, H, K, V] float32.
o, ht = flash_kda.chunk_kda(q[:, :T], k[:, :T], v[:, :T], g[:, :T], beta[:, :T], safe_gate=True,
                            output_final_state=True, **opts)

# Decode: token T from a pool of 8 slots; the sequence's state lives in slot 5, updated in place.
pool = np.zeros((8, H, K, V), np.float32)
pool[5] = ht[0]
slots = np.array([5], np.int32)
o_next, _ = flash_kda.fused_recurrent_kda_fwd(q[:, T:], k[:, T:], v[:, T:], g[:, T:], beta[:, T:],
                                              initial_state=pool, ssm_state_indices=slots, **opts)

# The same T + 1 tokens in one prefill give the same last output and final state.
o_all, ht_all = flash_kda.chunk_kda(q, k, v, g, beta, output_final_state=True, **opts)
err = np.abs(o_next[0, 0] - o_all[0, T]).max() / np.abs(o_all[0, T]).max()
print(f"output {o.shape}, decode step vs one prefill of T + 1 tokens: {err:.1e}")
if not (err < 1e-4 and np.allclose(pool[5], ht_all[0], atol=1e-4)):
    raise SystemExit("the decode step does not continue the prefill")

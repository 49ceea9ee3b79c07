"""A toy encoder-decoder with lfjax.generate's four methods, its numpy twin,
and brute-force greedy / beam search written from transformers 5.25's
definitions (plain Python over lists of hypotheses, no cache, no jit).

The toy decoder attends causally to its earlier positions (through the
cache in JAX, by recomputing the whole prefix in numpy) and to the encoder
output, so a wrong cache reorder or a wrong position changes its logits.
"""

import numpy as np
import jax
import jax.numpy as jnp
from flax import nnx


TRACES = [0]  # how many times ToySeq2Seq.encode ran (jit traces)


class ToySeq2Seq(nnx.Module):
  """Embeddings -> tanh encoder; decoder: token + position embedding, one
  causal self-attention and one cross-attention (single head, residual),
  logits = scale * tanh(h) @ out + bias + position * ramp (EOS only)."""

  def __init__(self, vocab=48, dim=16, max_positions=40, *, seed=0,
               scale=4.0, eos_ramp=0.0, eos_token_id=2):
    rng = np.random.default_rng(seed)

    def p(*shape):
      return nnx.Param(jnp.asarray(rng.standard_normal(shape) / np.sqrt(
          shape[0]), jnp.float32))

    self.embed = p(vocab, dim)
    self.enc_w, self.glob_w = p(dim, dim), p(dim)
    self.pos = p(max_positions, dim)
    self.wq, self.wk, self.wv = p(dim, dim), p(dim, dim), p(dim, dim)
    self.cq, self.ck, self.cv = p(dim, dim), p(dim, dim), p(dim, dim)
    self.out = p(dim, vocab)
    bias = rng.standard_normal(vocab) * 0.5
    self.bias = nnx.Param(jnp.asarray(bias, jnp.float32))
    # EOS grows likelier with the decoder position, at a pace set per row
    # by the input (through the cross-attention), so rows end at different
    # lengths.
    ramp = np.zeros(vocab)
    ramp[eos_token_id] = eos_ramp
    self.ramp = nnx.Param(jnp.asarray(ramp, jnp.float32))
    self.scale = scale
    self.generation_config = {}

  def encode(self, input_ids_BxS, attention_mask_BxS=None,
             global_attention_mask_BxS=None):
    TRACES[0] += 1  # a global: the traced model is a copy
    x_BxSxE = self.embed[...][input_ids_BxS]
    if global_attention_mask_BxS is not None:
      x_BxSxE = x_BxSxE + (global_attention_mask_BxS[..., None]
                           * self.glob_w[...])
    return jnp.tanh(x_BxSxE @ self.enc_w[...])

  def init_cache(self, enc_BxSxE, encoder_mask_BxS, max_length, num_beams):
    # The encoder side once per input, the decoder buffers per beam row.
    b, _, e = enc_BxSxE.shape
    n = b * num_beams
    return dict(k=jnp.zeros((n, max_length, e)),
                v=jnp.zeros((n, max_length, e)),
                ck=enc_BxSxE @ self.ck[...], cv=enc_BxSxE @ self.cv[...],
                mask=encoder_mask_BxS.astype(bool), length=jnp.int32(0))

  def decode_step(self, ids_NxT, cache):
    t = ids_NxT.shape[1]
    n = cache["length"]
    pos_T = n + jnp.arange(t)
    h_NxTxE = self.embed[...][ids_NxT] + self.pos[...][pos_T]
    k = jax.lax.dynamic_update_slice_in_dim(cache["k"], h_NxTxE @ self.wk[...],
                                            n, axis=1)
    v = jax.lax.dynamic_update_slice_in_dim(cache["v"], h_NxTxE @ self.wv[...],
                                            n, axis=1)
    allowed_TxL = jnp.arange(k.shape[1])[None, :] <= pos_T[:, None]
    h_NxTxE = h_NxTxE + _attend(h_NxTxE @ self.wq[...], k, v,
                                allowed_TxL[None])
    # Each input's beams (contiguous rows) read its one encoder row.
    beams = ids_NxT.shape[0] // cache["ck"].shape[0]
    ck, cv, mask = (jnp.repeat(cache[name], beams, axis=0)
                    for name in ("ck", "cv", "mask"))
    h_NxTxE = h_NxTxE + 3 * _attend(h_NxTxE @ self.cq[...], ck, cv,
                                    mask[:, None, :])
    logits = (self.scale * jnp.tanh(h_NxTxE) @ self.out[...] + self.bias[...]
              + pos_T[:, None] * self.ramp[...])
    return logits.astype(jnp.float32), dict(cache, k=k, v=v, length=n + t)

  def reorder_cache(self, cache, index_N):
    return dict(cache, k=cache["k"][index_N], v=cache["v"][index_N])


def _attend(q_BxTxE, k_BxLxE, v_BxLxE, allowed_BxTxL):
  s = jnp.einsum("bte,ble->btl", q_BxTxE, k_BxLxE) / np.sqrt(
      q_BxTxE.shape[-1])
  s = jnp.where(allowed_BxTxL, s, -1e30)
  return jnp.einsum("btl,ble->bte", jax.nn.softmax(s, -1), v_BxLxE)


def numpy_next_logits(model, src_ids, src_mask, src_glob, prefix):
  """The toy's logits for the token after `prefix` (a list of decoder ids),
  recomputed from scratch in float64 numpy for one input row."""
  w = {name: np.asarray(getattr(model, name)[...], np.float64)
       for name in ("embed", "enc_w", "glob_w", "pos", "wq", "wk", "wv",
                    "cq", "ck", "cv", "out", "bias", "ramp")}
  x = w["embed"][np.asarray(src_ids)]
  if src_glob is not None:
    x = x + np.asarray(src_glob)[:, None] * w["glob_w"]
  enc = np.tanh(x @ w["enc_w"])
  t = len(prefix)
  h = w["embed"][np.asarray(prefix)] + w["pos"][:t]
  causal = np.tril(np.ones((t, t), bool))
  h = h + _np_attend(h @ w["wq"], h @ w["wk"], h @ w["wv"], causal)
  keep = np.asarray(src_mask).astype(bool)[None, :]
  h = h + 3 * _np_attend(h @ w["cq"], enc @ w["ck"], enc @ w["cv"], keep)
  return (model.scale * np.tanh(h[-1]) @ w["out"] + w["bias"]
          + (t - 1) * w["ramp"])


def _np_attend(q, k, v, allowed):
  s = np.where(allowed, q @ k.T / np.sqrt(q.shape[-1]), -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  return (p / p.sum(-1, keepdims=True)) @ v


def _log_softmax(x):
  x = x - x.max()
  return x - np.log(np.exp(x).sum())


def processed(scores, tokens, s):
  """transformers' processors in their order, for one hypothesis whose
  decoded tokens (decoder_start first) are `tokens`."""
  scores = scores.copy()
  cur = len(tokens)
  n = s.get("no_repeat_ngram_size", 0)
  if n and cur >= n:
    prefix = tuple(tokens[cur - n + 1:])
    for i in range(cur - n + 1):  # every complete n-gram
      if tuple(tokens[i:i + n - 1]) == prefix:
        scores[tokens[i + n - 1]] = -np.inf
  eos = s.get("eos", ())
  if eos and cur < s.get("min_length", 0):
    scores[list(eos)] = -np.inf
  if s.get("forced_bos") is not None and cur == 1:
    scores[:] = -np.inf
    scores[s["forced_bos"]] = 0.0
  if s.get("forced_eos") and cur == s["max_length"] - 1:
    scores[:] = -np.inf
    scores[list(s["forced_eos"])] = 0.0
  return scores


def greedy(next_logits, s):
  """One row of transformers' greedy search: (tokens, stopped by EOS)."""
  tokens = [s["start"]]
  while True:
    nxt = int(np.argmax(processed(next_logits(tokens), tokens, s)))
    tokens.append(nxt)
    if nxt in s.get("eos", ()) or len(tokens) >= s["max_length"]:
      return tokens


def beam(next_logits, s):
  """One row of transformers' beam search, from its definitions: returns
  the best num_return hypotheses [(score, tokens)], best first.

  Each step extends every running hypothesis by every token (log-softmax,
  processors, plus the hypothesis' score), keeps the best 2K (K = num_beams;
  (1 + #eos) K with several EOS ids); a candidate that ends with EOS or
  reaches max_length finishes, and enters the K best finished (score /
  generated_length ** length_penalty) only if it ranks among the first K and
  this row still takes finished hypotheses (not all K finished with
  early_stopping=True, not stopped by the early-stop test); the best K
  others run on. The row stops taking hypotheses once all K are finished and
  the best running score / best_len ** length_penalty is not above the worst
  finished one (best_len = generated length, or max_length - 1 with
  early_stopping="never" and length_penalty > 0). Hypotheses with -inf
  scores are dropped (transformers keeps them as dead beams, which never
  win while every beam has 2K finite continuations).
  """
  k, lp, early = s["num_beams"], s["length_penalty"], s["early_stopping"]
  keep = max(2, 1 + len(s.get("eos", ()))) * k
  running = [(0.0, [s["start"]])]
  finished = []
  closed = False  # the early-stop test has passed
  while True:
    cands = []
    for score, tokens in running:
      logp = processed(_log_softmax(next_logits(tokens)), tokens, s)
      cands += [(score + logp[v], tokens + [v]) for v in range(len(logp))
                if np.isfinite(logp[v])]
    cands = sorted(cands, key=lambda c: -c[0])[:keep]
    new_len = len(cands[0][1])
    hit = [new_len >= s["max_length"] or c[1][-1] in s.get("eos", ())
           for c in cands]
    full = len(finished) == k and early is True
    if not closed and not full:
      gen = new_len - 1
      finished += [(c[0] / gen ** lp, c[1]) for c, h in zip(cands[:k], hit)
                   if h]
      finished = sorted(finished, key=lambda f: -f[0])[:k]
    running = [c for c, h in zip(cands, hit) if not h][:k]
    if not closed and len(finished) == k and running:
      best_len = (s["max_length"] - 1 if early == "never" and lp > 0
                  else new_len - 1)
      closed = running[0][0] / best_len ** lp <= finished[-1][0]
    if closed or all(hit) or (len(finished) == k and early is True):
      return finished[:s.get("num_return", 1)]

"""The search loops of lfjax.generate, inside its jitted program: greedy
search (transformers 5.25's `_sample` with do_sample=False) and beam search
(`_beam_search` with `_get_top_k_continuations`,
`_get_running_beams_for_next_iteration`, `_update_finished_beams`,
`_check_early_stop_heuristic`, `_beam_search_has_unfinished_sequences`),
each a `lax.while_loop` over static [rows, max_length] buffers, and the
logits processors of `_get_logits_processor` in its order (NoRepeatNGram,
MinLength, MinNewTokens, ForcedBOS, ForcedEOS).

`plan` is lfjax.generate.Plan (the resolved, static settings); `model` has
decode_step / reorder_cache (lfjax.generate's module docstring); `cache` is
model.init_cache's for batch * num_beams rows, each input's beams
contiguous.

Letters: B inputs, K beams, N rows (B or B * K), L max_length, V vocab,
J candidates per input (beams_to_keep), G generated positions.
"""

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1.0e9  # transformers' "very large negative" beam-score offsets


def _process(plan, seqs_NxL, cur_len, scores_NxV):
  """transformers' logits processors, in `_get_logits_processor`'s order,
  for rows whose first cur_len tokens are decoded (cur_len: traced int)."""
  n = plan.no_repeat_ngram_size
  vocab = scores_NxV.shape[-1]
  vocab_V = jnp.arange(vocab)
  if n > 0 and seqs_NxL.shape[1] >= n:
    scores_NxV = _ban_ngrams(seqs_NxL, cur_len, scores_NxV, n)
  if plan.min_length > 0 and plan.eos_token_ids:
    is_eos_V = jnp.isin(vocab_V, jnp.array(plan.eos_token_ids))
    scores_NxV = jnp.where((cur_len < plan.min_length) & is_eos_V, -jnp.inf,
                           scores_NxV)
  if plan.forced_bos_token_id is not None:
    forced_V = jnp.where(vocab_V == plan.forced_bos_token_id, 0.0, -jnp.inf)
    scores_NxV = jnp.where(cur_len == 1, forced_V, scores_NxV)
  if plan.forced_eos_token_ids:
    forced_V = jnp.where(
        jnp.isin(vocab_V, jnp.array(plan.forced_eos_token_ids)), 0.0, -jnp.inf)
    scores_NxV = jnp.where(cur_len == plan.max_length - 1, forced_V,
                           scores_NxV)
  return scores_NxV


def _ban_ngrams(seqs_NxL, cur_len, scores_NxV, n):
  """NoRepeatNGramLogitsProcessor: every n-gram of the first cur_len tokens
  whose first n-1 tokens equal the last n-1 bans its last token."""
  rows, length = seqs_NxL.shape
  vocab = scores_NxV.shape[-1]
  w = length - n + 1  # windows start at 0 .. length-n
  windows_NxWxn = jnp.stack([seqs_NxL[:, i:i + w] for i in range(n)], -1)
  prefix_Nxm = jax.lax.dynamic_slice_in_dim(seqs_NxL, cur_len - n + 1, n - 1,
                                            axis=1)
  complete_W = jnp.arange(w) <= cur_len - n  # inside the decoded tokens
  match_NxW = (jnp.all(windows_NxWxn[..., :-1] == prefix_Nxm[:, None], -1)
               & complete_W)
  # Non-matching windows write to a spare column past the vocabulary.
  col_NxW = jnp.where(match_NxW, jnp.minimum(windows_NxWxn[..., -1], vocab),
                      vocab)
  banned_NxV1 = jnp.zeros((rows, vocab + 1), bool).at[
      jnp.arange(rows)[:, None], col_NxW].set(True)
  return jnp.where(banned_NxV1[:, :vocab] & (cur_len >= n), -jnp.inf,
                   scores_NxV)


def _next_logits(model, tokens_N, cache):
  logits_NxTxV, cache = model.decode_step(tokens_N[:, None], cache)
  return logits_NxTxV[:, -1].astype(jnp.float32), cache


def greedy(plan, model, cache, batch):
  """transformers' `_sample` with do_sample=False. Returns the sequences
  [B, max_length] and the decoded length."""
  length = plan.max_length
  pad = plan.pad_token_id if plan.pad_token_id is not None else 0
  seqs_BxL = jnp.full((batch, length), pad, jnp.int32)
  seqs_BxL = seqs_BxL.at[:, 0].set(plan.decoder_start_token_id)
  eos = jnp.array(plan.eos_token_ids or (-1,))

  def body(carry):
    cur_len, seqs_BxL, unfinished_B, cache, _ = carry
    logits_BxV, cache = _next_logits(model, seqs_BxL[:, cur_len - 1], cache)
    scores_BxV = _process(plan, seqs_BxL, cur_len, logits_BxV)
    next_B = jnp.argmax(scores_BxV, -1).astype(jnp.int32)
    if plan.eos_token_ids:  # finished rows get pad_token_id
      next_B = jnp.where(unfinished_B, next_B, plan.pad_token_id)
    seqs_BxL = seqs_BxL.at[:, cur_len].set(next_B)
    cur_len = cur_len + 1
    stop_B = (cur_len >= length) | (jnp.isin(next_B, eos)
                                   & bool(plan.eos_token_ids))
    unfinished_B = unfinished_B & ~stop_B
    return cur_len, seqs_BxL, unfinished_B, cache, ~jnp.any(unfinished_B)

  carry = (jnp.int32(1), seqs_BxL, jnp.ones((batch,), bool), cache,
           jnp.bool_(False))
  cur_len, seqs_BxL, _, _, _ = jax.lax.while_loop(lambda c: ~c[-1], body,
                                                  carry)
  return seqs_BxL, cur_len


def _penalties(plan):
  """float32(n ** length_penalty) for n = 0 .. max_length, computed in
  Python floats as transformers does (n >= 1 is ever used)."""
  lp = plan.length_penalty
  return jnp.asarray(np.array([1.0] + [n ** lp for n in range(
      1, plan.max_length + 1)], np.float32))


def _take(x_BxKx, index_BxJ):
  """transformers' _gather_beams: x[b, index[b, j], ...]."""
  index = index_BxJ.reshape(index_BxJ.shape + (1,) * (x_BxKx.ndim - 2))
  return jnp.take_along_axis(x_BxKx, index, axis=1)


def beam(plan, model, cache, batch):
  """transformers' `_beam_search` (do_sample=False). Returns the best
  num_return_sequences sequences [B*R, max_length] and their generated
  lengths [B*R]."""
  k, length = plan.num_beams, plan.max_length
  keep = max(2, 1 + len(plan.eos_token_ids)) * k  # beams_to_keep
  top_k_mask_J = jnp.arange(keep) < k  # top_num_beam_mask
  eos = jnp.array(plan.eos_token_ids or (-1,))
  denom_L = _penalties(plan)
  early = plan.early_stopping

  running_BxKxL = jnp.full((batch, k, length), plan.fill, jnp.int32)
  running_BxKxL = running_BxKxL.at[:, :, 0].set(plan.decoder_start_token_id)
  running_scores_BxK = jnp.zeros((batch, k), jnp.float32).at[:, 1:].set(NEG)
  running_idx_BxKxG = jnp.full((batch, k, length - 1), -1, jnp.int32)
  state = dict(
      cur_len=jnp.int32(1), cache=cache, running=running_BxKxL,
      running_scores=running_scores_BxK, running_idx=running_idx_BxKxG,
      seqs=running_BxKxL, scores=jnp.full((batch, k), NEG, jnp.float32),
      idx=running_idx_BxKxG, finished=jnp.zeros((batch, k), bool),
      unsatisfied=jnp.ones((batch, 1), bool), done=jnp.bool_(False))

  def body(st):
    cur_len = st["cur_len"]
    running = st["running"]
    rows = batch * k
    logits_NxV, cache = _next_logits(
        model, running[:, :, cur_len - 1].reshape(rows), st["cache"])
    vocab = logits_NxV.shape[-1]
    logp_NxV = jax.nn.log_softmax(logits_NxV, axis=-1)
    logp_NxV = _process(plan, running.reshape(rows, length), cur_len,
                        logp_NxV)
    logp_BxKV = (logp_NxV.reshape(batch, k, vocab)
                 + st["running_scores"][:, :, None]).reshape(batch, -1)

    # _get_top_k_continuations
    top_lp_BxJ, top_i_BxJ = jax.lax.top_k(logp_BxKV, keep)
    src_BxJ = top_i_BxJ // vocab
    tok_BxJ = (top_i_BxJ % vocab).astype(jnp.int32)
    top_seqs_BxJxL = _take(running, src_BxJ).at[:, :, cur_len].set(tok_BxJ)
    flat_src_BxJ = (src_BxJ + jnp.arange(batch)[:, None] * k).astype(
        jnp.int32)
    top_idx_BxJxG = _take(st["running_idx"], src_BxJ).at[
        :, :, cur_len - 1].set(flat_src_BxJ)
    # stopping criteria on the new token: MaxLength, then EOS
    hits_BxJ = (cur_len + 1 >= length) | (
        jnp.isin(tok_BxJ, eos) & bool(plan.eos_token_ids))

    # _get_running_beams_for_next_iteration
    run_lp_BxJ = top_lp_BxJ + hits_BxJ.astype(jnp.float32) * NEG
    next_BxK = jax.lax.top_k(run_lp_BxJ, k)[1]
    running = _take(top_seqs_BxJxL, next_BxK)
    running_scores = _take(run_lp_BxJ, next_BxK)
    running_idx = _take(top_idx_BxJxG, next_BxK)

    # _update_finished_beams
    just_finished_BxJ = hits_BxJ & top_k_mask_J
    fin_lp_BxJ = top_lp_BxJ / denom_L[cur_len]
    full_Bx1 = jnp.all(st["finished"], -1, keepdims=True) & (early is True)
    fin_lp_BxJ = fin_lp_BxJ + full_Bx1.astype(jnp.float32) * NEG
    fin_lp_BxJ = fin_lp_BxJ + (~st["unsatisfied"]).astype(jnp.float32) * NEG
    fin_lp_BxJ = fin_lp_BxJ + (~just_finished_BxJ).astype(jnp.float32) * NEG
    merged_scores = jnp.concatenate([st["scores"], fin_lp_BxJ], 1)
    best_BxK = jax.lax.top_k(merged_scores, k)[1]
    seqs = _take(jnp.concatenate([st["seqs"], top_seqs_BxJxL], 1), best_BxK)
    scores = _take(merged_scores, best_BxK)
    idx = _take(jnp.concatenate([st["idx"], top_idx_BxJxG], 1), best_BxK)
    finished = _take(jnp.concatenate([st["finished"], just_finished_BxJ], 1),
                     best_BxK)

    # the cache follows the beams that continue
    cache = model.reorder_cache(cache,
                                running_idx[:, :, cur_len - 1].reshape(rows))
    cur_len = cur_len + 1

    # _check_early_stop_heuristic
    if early == "never" and plan.length_penalty > 0.0:
      best_len = length - 1
    else:
      best_len = cur_len - 1
    best_Bx1 = running_scores[:, :1] / denom_L[best_len]
    worst_BxK = jnp.where(finished, jnp.min(scores, 1, keepdims=True), NEG)
    unsatisfied = st["unsatisfied"] & jnp.any(best_Bx1 > worst_BxK, -1,
                                              keepdims=True)
    # _beam_search_has_unfinished_sequences
    go_on = (jnp.any(unsatisfied)
             & ~(jnp.all(finished) & (early is True))
             & ~jnp.all(hits_BxJ))
    return dict(cur_len=cur_len, cache=cache, running=running,
                running_scores=running_scores, running_idx=running_idx,
                seqs=seqs, scores=scores, idx=idx, finished=finished,
                unsatisfied=unsatisfied, done=~go_on)

  st = jax.lax.while_loop(lambda st: ~st["done"], body, state)
  r = plan.num_return_sequences
  seqs_NxL = st["seqs"][:, :r].reshape(batch * r, length)
  generated_N = jnp.sum(st["idx"][:, :r] != -1, -1).reshape(batch * r)
  return seqs_NxL, generated_N

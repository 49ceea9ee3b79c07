"""Bad input to windowed_attention fails loudly, naming the argument."""

import jax.numpy as jnp
import numpy as np
import pytest

from lfjax.attention import windowed_attention

Q = jnp.zeros((2, 10, 3, 4), jnp.float32)


def call(**overrides):
  args = dict(q=Q, k=Q, v=Q, window=2)
  args.update(overrides)
  q, k, v = args.pop("q"), args.pop("k"), args.pop("v")
  return windowed_attention(q, k, v, **args)


@pytest.mark.parametrize("overrides,pattern", [
    (dict(q=jnp.zeros((10, 3, 4))), r"q: expected a \[batch, seq, heads"),
    (dict(k=jnp.zeros((2, 11, 3, 4))), r"k, v: expected k of q's shape"),
    (dict(k=jnp.zeros((2, 10, 3, 5))), r"k, v: expected k of q's shape"),
    (dict(v=jnp.zeros((2, 10, 2, 4))), r"k, v: expected k of q's shape"),
    (dict(q=jnp.zeros((2, 10, 3, 4), jnp.int32)), r"q: expected a floating"),
    (dict(window=-1), r"window: expected a Python int >= 0.*-1"),
    (dict(window=2.5), r"window: expected a Python int"),
    (dict(window=True), r"window: expected a Python int"),
    (dict(dilation=0), r"dilation: expected ints >= 1"),
    (dict(dilation=[1, 2]), r"dilation: expected one value per head \(3\), "
                            r"got 2"),
    (dict(dilation=[1, 2, 0]), r"dilation: expected ints >= 1"),
    (dict(dilation=[1, 2, 1.5]), r"dilation: expected ints >= 1"),
    (dict(dilation="2"), r"dilation: expected one value per head"),
    (dict(key_mask=jnp.ones((2, 10), jnp.int32)),
     r"key_mask: expected a bool array.*int32"),
    (dict(key_mask=jnp.ones((2, 9), bool)),
     r"key_mask: expected shape \[batch, seq\] = \[2, 10\], got \[2, 9\]"),
    (dict(global_mask=np.ones((2, 10), np.float32)),
     r"global_mask: expected a bool array"),
    (dict(global_mask=jnp.ones((1, 10), bool)),
     r"global_mask: expected shape"),
    (dict(global_mask=jnp.zeros((2, 10), bool), causal=True),
     r"global_mask: .*cannot be combined with causal=True"),
    (dict(global_mask=jnp.zeros((2, 10), bool), global_qkv=(Q, Q)),
     r"global_qkv: expected a tuple of 3 arrays \(q_g, k_g, v_g\), got a tuple of 2"),
    (dict(global_mask=jnp.zeros((2, 10), bool),
          global_qkv=(Q, Q, jnp.zeros((2, 10, 3, 5)))),
     r"global_qkv: expected v_g of shape"),
    (dict(max_global=-1), r"max_global: expected a Python int >= 0"),
    (dict(max_global=1.5), r"max_global: expected a Python int"),
    (dict(scale="x"), r"scale: expected a Python float"),
    (dict(impl="flash"), r"impl: expected one of .*got 'flash'"),
])
def test_bad_input_raises(overrides, pattern):
  with pytest.raises(ValueError, match=pattern):
    call(**overrides)

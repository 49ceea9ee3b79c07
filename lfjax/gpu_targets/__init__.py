"""XLA's descriptions of the GPUs `--plan_for` compiles for (lfjax.plan):
GpuTargetConfigProto text, from xla/backends/gpu/target_config/specs/ as
jax-cuda12-plugin 0.12.0.1 embeds them (device data, not settings)."""

"""fastdfkd-jax: FastDFKD (Fang et al., AAAI-22) in JAX/Flax.

Data-free knowledge distillation with a meta-generator that adapts to each new
synthetic batch in k = 2..10 steps.
"""

__version__ = "0.1.0"

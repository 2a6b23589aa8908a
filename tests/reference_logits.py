"""Shared logits and numpy references for the loss tests (KD and synthesis)."""

import numpy as np

# 3 samples x 4 classes; argmax(student) == argmax(teacher) for samples 0 and 2
# (classes 0 and 2) but not for sample 1 (student 1, teacher 0).
STUDENT = np.array([[2.0, 1.0, 0.1, -1.0],
                    [0.5, 2.5, 0.0, 1.0],
                    [1.0, 0.0, 3.0, 0.5]])
TEACHER = np.array([[1.5, 0.5, 0.0, -0.5],
                    [2.0, 0.0, 1.0, 0.5],
                    [0.0, 1.0, 2.0, -1.0]])
TARGETS = np.array([0, 3, 2])


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_kl(student, teacher, temperature=1.0):
  """Per sample sum_c p_t (log p_t - log p_s) at temperature T."""
  ls = np_log_softmax(student / temperature)
  lt = np_log_softmax(teacher / temperature)
  return (np.exp(lt) * (lt - ls)).sum(-1)

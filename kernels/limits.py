"""What the Triton kernels can take, as plain constants (no triton import): the public ops'
capability tables read them to choose a backend before any kernel module is loaded."""

__all__ = ["BEAM_STEP_TRITON_MAX_VOCAB", "ATTENTION_TRITON_MAX_HEAD_DIM"]

BEAM_STEP_TRITON_MAX_VOCAB = 32768  # beam_step's whole-row tile is next_pow2(V) lanes of registers
ATTENTION_TRITON_MAX_HEAD_DIM = 256  # one [BLOCK_M, D] float32 accumulator per program in registers

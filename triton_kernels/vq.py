"""Triton kernels of pyops::vq_search / vq_segment_sum (being written)."""

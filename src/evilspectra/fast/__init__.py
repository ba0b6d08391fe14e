"""Fast paths for GPUs, each checked against the plain implementation it replaces (tests/test_fast.py).

- `muon.BatchedMuon`: torch.optim.Muon with Newton-Schulz batched over factors of equal shape
  (optimiser name `muon_batched`).
- `loss.fused_linear_cross_entropy` / `loss.sft_loss_sum_chunked`: the LM head and cross-entropy
  over vocabulary chunks, without the (tokens x vocab) fp32 logits.
- `generate.StaticGenerator`: a lean sampling loop over a static KV cache (decode step compiled
  on CUDA) that draws the same tokens as HF `generate` for the same seed.

bench/gpu.py measures each against the plain stack.

Every fast path is opt-in until a committed GPU result (bench/results/gpu-*.jsonl) shows it correct
and faster on CUDA: a default must be a path that has run on the hardware it serves. A path so
shown is named in `CUDA_VERIFIED`, and only then may an `auto` setting choose it.
"""

# Names of fast paths with a committed CUDA result; none yet (no GPU run so far, issue 15).
CUDA_VERIFIED: frozenset[str] = frozenset()
